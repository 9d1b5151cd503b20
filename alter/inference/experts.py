"""The deployable artifact of a trained ALTER model and its on-disk format.

A checkpoint is one directory, loaded without running code (JSON + safetensors)::

    <dir>/unet/            the UNet in diffusers layout (config.json + safetensors)
    <dir>/experts.json     expert masks (N_E x N_L, with unit names), the
                           1000-entry routing table, space, architecture, keep
                           ratios, MACs and a fingerprint of the UNet's weights

There is one UNet for all experts; an expert is only its mask.
"""
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from torch.distributed.tensor import DTensor

from alter.utils.io import atomic_write_json

EXPERTS_FILE = 'experts.json'
# The dtypes a UNet is run in; the fingerprint holds one hash per dtype.
FINGERPRINT_DTYPES = {'float32': torch.float32, 'float16': torch.float16,
                      'bfloat16': torch.bfloat16}
FINGERPRINT_SAMPLES = 16  # values per tensor


def weights_fingerprint(unet: nn.Module) -> Dict[str, str]:
    """A cheap fingerprint of a UNet's weights: SHA-256 over the names, shapes and
    ``FINGERPRINT_SAMPLES`` evenly spaced values of every state-dict tensor.

    Returns one hash per dtype of ``FINGERPRINT_DTYPES``, of the sampled values
    cast to that dtype: a UNet cast to float16 or bfloat16 after loading rounds
    the same values the same way, so it matches the entry of its dtype.
    Sharded (DTensor) weights are gathered, so under FSDP every rank must call it.
    """
    header, samples = [], []
    for name, tensor in sorted(unet.state_dict().items()):
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        flat = tensor.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, min(FINGERPRINT_SAMPLES, flat.numel()),
                               device=flat.device).round().long()
        header.append([name, list(tensor.shape)])
        samples.append(flat[index].float())  # exact for float16/bfloat16/float32 weights
    values = torch.cat(samples).cpu()  # one device-to-host copy
    prefix = json.dumps(header).encode()
    return {name: hashlib.sha256(prefix + values.to(dtype).view(torch.uint8).numpy().tobytes())
            .hexdigest() for name, dtype in FINGERPRINT_DTYPES.items()}


def fingerprint_mismatch(fingerprint: Dict[str, str], unet: nn.Module) -> Optional[str]:
    """None if ``unet``'s weights match ``fingerprint`` in the UNet's own dtype, else why not."""
    dtype = str(next(unet.parameters()).dtype).replace('torch.', '')
    if dtype not in fingerprint:
        return (f'the fingerprint covers {sorted(fingerprint)} weights and this UNet is '
                f'{dtype}; cast it to one of them')
    if weights_fingerprint(unet)[dtype] != fingerprint[dtype]:
        return f'its {dtype} weights differ from the trained ones'
    return None


@dataclass(frozen=True)
class ExpertSet:
    """Expert masks and routing table, as plain Python data (host side).

    Attributes:
        unit_names: the N_L units of ``space``, in the space's order.
        masks: N_E tuples of N_L bools (True = unit runs).
        route: expert id of every training timestep 0..T-1.
        space: pruning space name; ``architecture``: the UNet config it belongs to.
        keep_ratio: realised keep ratio per MAC convention (averaged over timesteps).
        weights_fingerprint: ``weights_fingerprint`` of the trained UNet (None if the
            file records none).
    """

    unit_names: Tuple[str, ...]
    masks: Tuple[Tuple[bool, ...], ...]
    route: Tuple[int, ...]
    space: str
    architecture: dict
    keep_ratio: Dict[str, float]
    weights_fingerprint: Optional[Dict[str, str]] = None

    @classmethod
    def from_dict(cls, data: dict) -> 'ExpertSet':
        masks = tuple(tuple(bool(g) for g in row) for row in data['expert_masks'])
        names = tuple(data['unit_names'])
        if any(len(row) != len(names) for row in masks):
            raise ValueError(f'expert masks must have one gate per unit ({len(names)} units)')
        route = tuple(int(e) for e in data['routing_table'])
        if route and not 0 <= min(route) <= max(route) < len(masks):
            raise ValueError(f'routing table names experts outside 0..{len(masks) - 1}')
        fingerprint = data.get('weights_fingerprint')
        return cls(names, masks, route, data['space'], data['architecture'],
                   dict(data.get('keep_ratio', {})), dict(fingerprint) if fingerprint else None)

    @property
    def num_experts(self) -> int:
        return len(self.masks)

    def expert_at(self, timestep: float) -> int:
        """The expert of a scheduler timestep rounded to the training grid: a host-side lookup.

        Raises for a value off the grid 0..T-1 instead of clamping it: such a
        value is not a training timestep (e.g. a continuous-time scheduler's
        noise level), and clamping would silently run the expert of t = 0 or T-1.
        """
        value = float(timestep)
        index = round(value) if math.isfinite(value) else -1
        if not 0 <= index < len(self.route):
            raise ValueError(f'timestep {value} is off the training grid 0..{len(self.route) - 1} '
                             'that the routing table is indexed by: route with a discrete-time '
                             'scheduler of the training noise schedule')
        return self.route[index]

    def experts_for(self, timesteps: Sequence[float]) -> List[int]:
        return [self.expert_at(t) for t in timesteps]


def save_checkpoint(out_dir, unet: UNet2DConditionModel, experts: Optional[dict] = None,
                    half: bool = False) -> Path:
    """Write ``unet/`` (safetensors) and, for ALTER models, ``experts.json``.

    ``experts.json`` records the fingerprint of the weights as written (after
    ``half``); experts exported with a fingerprint of other weights are refused.
    The UNet folder is written next to the target and renamed into place, so
    an interrupted save never leaves a half-written checkpoint over a good one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / 'unet'
    staging = out_dir / '.unet.tmp'
    exported = (experts or {}).get('weights_fingerprint')
    mismatch = fingerprint_mismatch(exported, unet) if exported else None
    if mismatch:
        raise ValueError(f'the experts were exported from another UNet than the one being '
                         f'saved ({mismatch}); save the UNet they were trained with')
    model = unet.half() if half else unet
    if experts is not None:
        experts = dict(experts, weights_fingerprint=weights_fingerprint(model))
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

