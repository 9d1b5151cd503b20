"""The deployable artifact of a trained ALTER model and its on-disk format.

A checkpoint is one directory, loaded without running code (JSON + safetensors)::

    <dir>/unet/            the UNet in diffusers layout (config.json + safetensors)
    <dir>/experts.json     expert masks (N_E x N_L, with unit names), the
                           1000-entry routing table, space, architecture, keep
                           ratios and MACs

There is one UNet for all experts; an expert is only its mask.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from diffusers import UNet2DConditionModel

from alter.utils.io import atomic_write_json

EXPERTS_FILE = 'experts.json'


@dataclass(frozen=True)
class ExpertSet:
    """Expert masks and routing table, as plain Python data (host side).

    Attributes:
        unit_names: the N_L units of ``space``, in the space's order.
        masks: N_E tuples of N_L bools (True = unit runs).
        route: expert id of every training timestep 0..T-1.
        space: pruning space name; ``architecture``: the UNet config it belongs to.
        keep_ratio: realised keep ratio per MAC convention (averaged over timesteps).
    """

    unit_names: Tuple[str, ...]
    masks: Tuple[Tuple[bool, ...], ...]
    route: Tuple[int, ...]
    space: str
    architecture: dict
    keep_ratio: Dict[str, float]

    @classmethod
    def from_dict(cls, data: dict) -> 'ExpertSet':
        masks = tuple(tuple(bool(g) for g in row) for row in data['expert_masks'])
        names = tuple(data['unit_names'])
        if any(len(row) != len(names) for row in masks):
            raise ValueError(f'expert masks must have one gate per unit ({len(names)} units)')
        route = tuple(int(e) for e in data['routing_table'])
        if route and not 0 <= min(route) <= max(route) < len(masks):
            raise ValueError(f'routing table names experts outside 0..{len(masks) - 1}')
        return cls(names, masks, route, data['space'], data['architecture'],
                   dict(data.get('keep_ratio', {})))

    @property
    def num_experts(self) -> int:
        return len(self.masks)

    def expert_at(self, timestep: float) -> int:
        """The expert of a (possibly non-integer) scheduler timestep: a host-side lookup."""
        index = min(max(int(round(float(timestep))), 0), len(self.route) - 1)
        return self.route[index]

    def experts_for(self, timesteps: Sequence[float]) -> List[int]:
        return [self.expert_at(t) for t in timesteps]


def save_checkpoint(out_dir, unet: UNet2DConditionModel, experts: Optional[dict] = None,
                    half: bool = False) -> Path:
    """Write ``unet/`` (safetensors) and, for ALTER models, ``experts.json``.

    The UNet folder is written next to the target and renamed into place, so
    an interrupted save never leaves a half-written checkpoint over a good one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / 'unet'
    staging = out_dir / '.unet.tmp'
    model = unet.half() if half else unet
    model.save_pretrained(staging, safe_serialization=True)
    if half:
        unet.float()
    if target.exists():
        old = out_dir / '.unet.old'
        target.rename(old)
        staging.rename(target)
        _remove_tree(old)
    else:
        staging.rename(target)
    if experts is not None:
        atomic_write_json(out_dir / EXPERTS_FILE, experts)
    return out_dir


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def load_experts(checkpoint) -> ExpertSet:
    """The ``ExpertSet`` of a checkpoint directory (or of an ``experts.json`` path)."""
    path = Path(checkpoint)
    path = path / EXPERTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f'no expert file at {path}: an ALTER checkpoint directory '
                                f'holds {EXPERTS_FILE} next to unet/')
    return ExpertSet.from_dict(json.loads(path.read_text()))


def load_unet(checkpoint) -> UNet2DConditionModel:
    """The UNet of a checkpoint directory (float32)."""
    folder = Path(checkpoint) / 'unet'
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(f'no UNet at {folder}: expected a diffusers folder with '
                                'config.json and safetensors weights')
    return UNet2DConditionModel.from_pretrained(folder, local_files_only=True).float()

