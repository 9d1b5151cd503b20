"""The deployable artifact of a trained ALTER model and its on-disk format.

A checkpoint is one directory, loaded without running code (JSON + safetensors)::

    <dir>/unet/            the UNet in diffusers layout (config.json + safetensors);
                           a diffusion transformer is in <dir>/transformer/, the
                           sub-folder its pipelines use
    <dir>/experts.json     expert masks (N_E x N_L, with unit names and module
                           paths), the routing table, space, architecture, keep
                           ratios, MACs and a fingerprint of the UNet's weights;
                           for flow-matching models also the timestep grid

There is one UNet for all experts; an expert is only its mask. ``experts.json``
has a versioned schema (``EXPERTS_SCHEMA``), checked when it is written and when
it is read: a wrong field is refused by name instead of coerced. Its keep ratios
and MACs are a record of the export; tools recompute them from the masks and the
UNet's MAC table (``ExpertSet.keep_ratios``). A checkpoint directory is written
whole into a sibling folder and swapped in, so it is never half old, half new.
"""
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import diffusers
import torch
from safetensors import SafetensorError
from torch import nn
from torch.distributed.tensor import DTensor

from alter.inference.grids import DiscreteGrid
from alter.registry import BACKBONES, PRUNING_SPACES, TIMESTEP_GRIDS
from alter.units.backbones import backbone_of, denoiser_folders
from alter.units.macs import MacTable
from alter.utils.cli import InputError
from alter.utils.io import replace_folder
from alter.utils.tensors import non_finite

EXPERTS_FILE = 'experts.json'
EXPERTS_FORMAT = 1  # experts.json's format_version; raise it when the schema changes
RE_EXPORT = 'export the checkpoint again (tools/export.py WORK_DIR/iter_N.pth --out DIR)'
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
        # float64 on the host: float32 positions past 2**24 round beyond the last element
        # (SD's 2560 -> 1280 3x3 convs hold 29.5 M), and the same indices on every device.
        index = torch.linspace(0, flat.numel() - 1, min(FINGERPRINT_SAMPLES, flat.numel()),
                               dtype=torch.float64).round().long().to(flat.device)
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


class ExpertFileError(InputError):
    """An expert file (or exported experts) that breaks the schema."""


def _is_int(value: Any, low: int = 0, high: float = math.inf) -> bool:
    return type(value) is int and low <= value < high


def _is_ratio(value: Any) -> bool:
    return type(value) in (int, float) and 0 < value <= 1


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _registered_spaces() -> str:
    return f'a registered pruning space ({", ".join(PRUNING_SPACES.known_names())})'


# field -> (required, check, what the check expects, or a function saying it); masks and
# routing table are checked against each other by ExpertSet.from_dict.
def _is_grid(value: Any) -> bool:
    """A ``timestep_grid`` record that builds a registered grid (its fields valid)."""
    if not isinstance(value, dict) or value.get('type') not in TIMESTEP_GRIDS.known_names():
        return False
    try:
        TIMESTEP_GRIDS.build(dict(value, num_rows=1))
    except (TypeError, ValueError):
        return False
    return True


EXPERTS_SCHEMA: Dict[str, Tuple[bool, Callable[[Any], bool], Any]] = {
    'format_version': (True, lambda v: v == EXPERTS_FORMAT, f'{EXPERTS_FORMAT}'),
    'architecture': (True, lambda v: isinstance(v, dict) and isinstance(v.get('key'), str),
                     'an object with the architecture "key" (a string)'),
    'space': (True, lambda v: v in PRUNING_SPACES.known_names(), _registered_spaces),
    'unit_names': (True, _is_str_list, 'a non-empty list of unit names'),
    'unit_paths': (True, _is_str_list, 'a non-empty list of module paths'),
    'expert_masks': (True, lambda v: isinstance(v, list) and bool(v),
                     'a non-empty list of masks, one per expert'),
    'routing_table': (True, lambda v: isinstance(v, list) and bool(v),
                      'a non-empty list of expert ids, one per training timestep'),
    'weights_fingerprint': (True, lambda v: isinstance(v, dict) and bool(v) and all(
        isinstance(h, str) for h in v.values()), 'an object of SHA-256 hashes per dtype'),
    'num_experts': (False, lambda v: _is_int(v, 1), 'a positive integer'),
    'keep_ratio': (False, lambda v: isinstance(v, dict) and all(map(_is_ratio, v.values())),
                   'an object of keep ratios in (0, 1] per MAC convention'),
    'target_keep_ratio': (False, _is_ratio, 'a number in (0, 1]'),
    'macs': (False, lambda v: isinstance(v, dict), 'an object per MAC convention'),
    'resolution': (False, lambda v: _is_int(v, 1), 'a positive integer (pixels)'),
    'context_length': (False, lambda v: _is_int(v, 1), 'a positive integer (tokens)'),
    'step': (False, lambda v: _is_int(v), 'a non-negative integer'),
    # Absent: the DDPM grid (round(t)), the grid of every UNet checkpoint.
    'timestep_grid': (False, lambda v: _is_grid(v),
                      lambda: 'an object naming a registered timestep grid ("type": one of '
                      f'{", ".join(TIMESTEP_GRIDS.known_names())}) and its fields '
                      '(SigmaGrid: a positive "sigma_scale")'),
}


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + '...'


def check_expert_record(data: Any, source: str) -> dict:
    """Raise ``ExpertFileError`` naming the field unless ``data`` follows ``EXPERTS_SCHEMA``
    (required fields present, no unknown ones, every value of its type); returns ``data``."""
    if not isinstance(data, dict):
        raise ExpertFileError(f'{source} must hold a JSON object of the expert fields, found '
                              f'{type(data).__name__}; {RE_EXPORT}')
    unknown = sorted(set(data) - set(EXPERTS_SCHEMA))
    if unknown:
        raise ExpertFileError(f'{source}: unknown fields {unknown}; the format '
                              f'{EXPERTS_FORMAT} fields are {sorted(EXPERTS_SCHEMA)}')
    for field, (required, check, expected) in EXPERTS_SCHEMA.items():
        if field not in data:
            if required:
                raise ExpertFileError(f'{source}: field {field!r} is missing (expected '
                                      f'{expected}); {RE_EXPORT}')
        elif not check(data[field]):
            expected = expected() if callable(expected) else expected
            raise ExpertFileError(f'{source}: field {field!r} must be {expected}, found '
                                  f'{_shown(data[field])}; {RE_EXPORT}')
    return data


@dataclass(frozen=True)
class ExpertSet:
    """Expert masks and routing table, as plain Python data (host side).

    Attributes:
        unit_names: the N_L units of ``space``, in the space's order.
        masks: N_E tuples of N_L bools (True = unit runs).
        route: expert id of every training timestep 0..T-1.
        space: pruning space name; ``architecture``: the UNet config it belongs to.
        keep_ratio: keep ratio per MAC convention as recorded at export (averaged
            over timesteps); ``keep_ratios(costs)`` recomputes it.
        weights_fingerprint: ``weights_fingerprint`` of the trained UNet (None if the
            file records none).
        unit_paths: module path of each unit in the UNet (None if not recorded):
            tells apart spaces whose units share names.
        grid: the ``alter.inference.grids`` grid mapping the timestep a model
            receives to a row of ``route`` (default: the DDPM grid, round(t)).
    """

    unit_names: Tuple[str, ...]
    masks: Tuple[Tuple[bool, ...], ...]
    route: Tuple[int, ...]
    space: str
    architecture: dict
    keep_ratio: Dict[str, float]
    weights_fingerprint: Optional[Dict[str, str]] = None
    unit_paths: Optional[Tuple[str, ...]] = None
    grid: Any = None

    def __post_init__(self) -> None:
        if self.grid is None:
            object.__setattr__(self, 'grid', DiscreteGrid(len(self.route)))

    @classmethod
    def from_dict(cls, data: dict, source: str = 'the experts') -> 'ExpertSet':
        """From the fields of an expert file; masks must hold 0/1 (or true/false), the
        routing table expert ids, with one gate per unit and ``num_experts`` masks."""
        names = tuple(data['unit_names'])
        rows = data['expert_masks']
        for e, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(names):
                raise ExpertFileError(f'{source}: expert_masks[{e}] must have one gate per unit '
                                      f'({len(names)} units), found {_shown(row)}; {RE_EXPORT}')
            bad = next((g for g in row if g not in (0, 1) or type(g) not in (int, bool)), None)
            if bad is not None:
                raise ExpertFileError(f'{source}: expert_masks[{e}] holds {_shown(bad)}; a gate '
                                      f'is 0 (skipped) or 1 (runs); {RE_EXPORT}')
        if data.get('num_experts', len(rows)) != len(rows):
            raise ExpertFileError(f'{source}: num_experts is {data["num_experts"]} but '
                                  f'expert_masks holds {len(rows)} masks; {RE_EXPORT}')
        route = data['routing_table']
        bad = next((e for e in route if not _is_int(e, 0, len(rows))), None)
        if bad is not None:
            raise ExpertFileError(f'{source}: routing_table holds {_shown(bad)}; it names '
                                  f'experts 0..{len(rows) - 1}; {RE_EXPORT}')
        paths = data.get('unit_paths')
        if paths is not None and len(paths) != len(names):
            raise ExpertFileError(f'{source}: unit_paths has {len(paths)} entries for '
                                  f'{len(names)} unit_names; {RE_EXPORT}')
        fingerprint = data.get('weights_fingerprint')
        grid = TIMESTEP_GRIDS.build(dict(data.get('timestep_grid', dict(type='DiscreteGrid')),
                                         num_rows=len(route)))
        return cls(names, tuple(tuple(bool(g) for g in row) for row in rows), tuple(route),
                   data['space'], data['architecture'], dict(data.get('keep_ratio', {})),
                   dict(fingerprint) if fingerprint else None,
                   tuple(paths) if paths is not None else None, grid)

    @property
    def num_experts(self) -> int:
        return len(self.masks)

    def keep_ratios(self, costs: Dict[str, MacTable]) -> Dict[str, float]:
        """Keep ratio per MAC convention, averaged over the routing table's timesteps,
        from the masks and ``costs`` (the UNet's MAC tables), not the recorded numbers."""
        route = torch.tensor(self.route)
        masks = torch.tensor(self.masks, dtype=torch.float64)
        return {c: table.keep_ratio(masks)[route].mean().item() for c, table in costs.items()}

    def expert_at(self, timestep: float) -> int:
        """The expert of the timestep value a model receives: a host-side lookup of its row
        on the grid (DDPM models: rounded to 0..T-1; flow models: the bin of sigma).

        Raises for a value off the grid instead of clamping it: such a value is
        not one the model was trained on (e.g. a continuous-time scheduler's
        noise level), and clamping would silently run the expert of the first or
        last row.
        """
        return self.route[self.grid.row(timestep)]

    def experts_for(self, timesteps: Sequence[float]) -> List[int]:
        return [self.expert_at(t) for t in timesteps]


def expert_record(experts: dict, unet: nn.Module) -> dict:
    """The ``experts.json`` record of exported experts: their fields plus the format
    version and the module path of every unit in ``unet``; checked as loading checks it."""
    units = PRUNING_SPACES.build(dict(type=experts['space'])).find(unet)
    if tuple(u.name for u in units) != tuple(experts['unit_names']):
        raise ExpertFileError(f'the exported experts name {len(experts["unit_names"])} units, '
                              f'but the {experts["space"]!r} space finds {len(units)} others in '
                              'the UNet being saved; save the UNet they were trained with')
    record = dict(experts, format_version=EXPERTS_FORMAT, unit_paths=[u.path for u in units])
    ExpertSet.from_dict(check_expert_record(record, 'the exported experts'))
    return record


def save_checkpoint(out_dir, unet: nn.Module, experts: Optional[dict] = None,
                    half: bool = False) -> Path:
    """Write ``out_dir`` as ``unet/`` (``transformer/`` for a diffusion transformer;
    safetensors) and, for ALTER models, ``experts.json``.

    ``experts.json`` records the fingerprint of the weights as written (after
    ``half``); experts exported with a fingerprint of other weights are refused.
    The directory is written whole beside ``out_dir`` and swapped in: an
    interrupted save leaves the previous checkpoint as it was, and no temporary
    folder behind.
    """
    exported = (experts or {}).get('weights_fingerprint')
    mismatch = fingerprint_mismatch(exported, unet) if exported else None
    if mismatch:
        raise ValueError(f'the experts were exported from another UNet than the one being '
                         f'saved ({mismatch}); save the UNet they were trained with')
    model = unet.half() if half else unet
    try:
        record = None if experts is None else expert_record(
            dict(experts, weights_fingerprint=weights_fingerprint(model)), model)

        def write(folder: Path) -> None:
            model.save_pretrained(folder / backbone_of(model).pipeline_attribute,
                                  safe_serialization=True)
            if record is not None:
                (folder / EXPERTS_FILE).write_text(json.dumps(record, indent=2) + '\n')

        return replace_folder(out_dir, write)
    finally:
        if half:
            unet.float()


def load_experts(checkpoint) -> ExpertSet:
    """The ``ExpertSet`` of a checkpoint directory (or of an ``experts.json`` path),
    refusing a file that breaks the schema with a message naming the field."""
    path = Path(checkpoint)
    path = path / EXPERTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f'no expert file at {path}: an ALTER checkpoint directory '
                                f'holds {EXPERTS_FILE} next to unet/')
    raw = path.read_bytes()
    if not raw.strip():
        raise ExpertFileError(f'{path} is empty; {RE_EXPORT}')
    try:
        data = json.loads(raw.decode('utf-8'))
    except UnicodeDecodeError as error:
        raise ExpertFileError(f'{path} is not UTF-8 text ({error}); {RE_EXPORT}') from None
    except json.JSONDecodeError as error:
        raise ExpertFileError(f'{path} is not valid JSON ({error}); {RE_EXPORT}') from None
    return ExpertSet.from_dict(check_expert_record(data, str(path)), str(path))


def load_unet(checkpoint) -> nn.Module:
    """The denoiser of a checkpoint directory (float32): its UNet, or its diffusion
    transformer; refused if its weights file cannot be read or holds a NaN or an
    infinity."""
    folders = [Path(checkpoint) / name for name in denoiser_folders()]
    folder = next((f for f in folders if (f / 'config.json').is_file()), None)
    if folder is None:
        raise FileNotFoundError(f'no UNet (or transformer) in {checkpoint}: expected a diffusers '
                                f'folder with config.json and safetensors weights at '
                                f'{" or ".join(map(str, folders))}')
    class_name = json.loads((folder / 'config.json').read_text()).get('_class_name')
    if class_name not in BACKBONES.known_names():
        raise InputError(f'{folder} holds a {class_name}; a checkpoint holds one of '
                         f'{BACKBONES.known_names()}; {RE_EXPORT}')
    files = ', '.join(sorted(p.name for p in folder.glob('*.safetensors'))) or 'no safetensors'
    try:
        unet = getattr(diffusers, class_name).from_pretrained(folder, local_files_only=True).float()
    except (OSError, ValueError, SafetensorError) as error:
        raise InputError(f'cannot read the UNet in {folder} ({files}): {error}; '
                         f'{RE_EXPORT}') from None
    bad = non_finite(unet.state_dict())
    if bad:
        raise InputError(f'the UNet weights in {folder} ({files}) hold non-finite values in '
                         f'{len(bad)} tensors (first: {bad[0]}): the file is corrupt; '
                         f'{RE_EXPORT}')
    return unet
