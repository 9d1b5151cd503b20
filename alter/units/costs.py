"""Per-unit costs the sparsity budget counts, chosen by a registered cost model.

The budget S(m) = 1 - sum_i c_i (1 - m_i) is the kept fraction of one whole
denoiser call, with c_i the fraction of the call that skipping unit i saves
(ALTER_SPEC §5). Where c_i comes from is a ``COST_MODELS`` option:

* ``macs``    -- the model's MAC table in its ``mac_convention`` (the paper; default);
* ``latency`` -- a table of measured seconds written by ``tools/profile_units.py``:
  how much faster the whole call runs with the unit skipped, on the device,
  dtype, resolution and batch the table records.

Contract: ``COST_MODELS.build(cfg).costs(unet, units, space, macs)`` returns a
table with ``name`` (the key of its keep ratio in logs), ``unit_fractions()``,
``min_keep_ratio`` and ``keep_ratio(masks)``.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Union

import torch
from torch import nn

from alter.registry import COST_MODELS
from alter.units.macs import MacTable, architecture_key, kept_fraction
from alter.units.unit import Unit

LATENCY_FORMAT = 'alter-unit-latency-1'
PROFILE_HINT = 'profile the model with tools/profile_units.py CONFIG --out TABLE.json'


class CostTableError(ValueError):
    """A latency table that cannot be used for this model (the message says why)."""


@dataclass
class LatencyTable:
    """Measured seconds each unit saves inside one whole call (``dense_seconds``).

    ``unit_seconds[i]`` belongs to ``unit_names[i]``; ``source`` is the file.
    """

    source: str
    device: str
    dtype: str
    resolution: int  # pixels
    batch: int  # samples per call
    torch_version: str
    dense_seconds: float
    unit_names: List[str]
    unit_seconds: List[float]

    name = 'latency'

    def unit_fractions(self) -> torch.Tensor:
        """(N_L,) float64: each unit's saved seconds as a fraction of the dense call."""
        return torch.tensor(self.unit_seconds, dtype=torch.float64) / self.dense_seconds

    @property
    def min_keep_ratio(self) -> float:
        """Keep ratio with every unit skipped, if savings added up."""
        return 1.0 - sum(self.unit_seconds) / self.dense_seconds

    def keep_ratio(self, masks: torch.Tensor) -> torch.Tensor:
        """Latency-weighted kept fraction: (..., N_L) gates -> (...), differentiable."""
        return kept_fraction(masks, self.unit_fractions())

    @classmethod
    def load(cls, path: Union[str, Path], unet: nn.Module, units: Sequence[Unit],
             space: str) -> 'LatencyTable':
        """Read and check ``path`` against the model it will budget: same architecture,
        pruning space and units (names, in order); raises ``CostTableError`` otherwise."""
        path = Path(path)
        if not path.is_file():
            raise CostTableError(f'latency table {path} not found; {PROFILE_HINT}')
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CostTableError(f'latency table {path} is not JSON ({error}); {PROFILE_HINT}')
        if not isinstance(data, dict) or data.get('format') != LATENCY_FORMAT:
            raise CostTableError(f'{path} is not a latency table (expected "format": '
                                 f'"{LATENCY_FORMAT}"); {PROFILE_HINT}')
        missing = [k for k in ('device', 'dtype', 'resolution', 'batch', 'torch_version',
                               'architecture', 'space', 'dense_seconds', 'units')
                   if k not in data]
        if missing:
            raise CostTableError(f'latency table {path} lacks {missing}; {PROFILE_HINT}')
        key = architecture_key(unet)
        if data['architecture'].get('key') != key:
            raise CostTableError(
                f'latency table {path} was profiled on another architecture (key '
                f'{data["architecture"].get("key")}, this model {key}); {PROFILE_HINT} of '
                'this model')
        if data['space'] != space:
            raise CostTableError(f'latency table {path} holds the units of the {data["space"]!r} '
                                 f'pruning space, the model prunes the {space!r} space; '
                                 f'{PROFILE_HINT} --space {space}')
        names = [u.name for u in units]
        found = [entry.get('name') for entry in data['units']]
        if found != names:
            absent = [n for n in names if n not in found]
            extra = [n for n in found if n not in names]
            raise CostTableError(
                f'latency table {path} does not match the model\'s {len(names)} units (it has '
                f'{len(found)}; missing {absent[:5]}, unknown {extra[:5]}'
                f'{", or in another order" if not absent and not extra else ""}); {PROFILE_HINT}')
        seconds = [entry.get('seconds') for entry in data['units']]
        dense = data['dense_seconds']
        bad = next((n for n, s in zip(names, seconds) if not _non_negative(s)), None)
        if bad is not None or not _non_negative(dense) or dense == 0:
            what = f'unit {bad!r}' if bad is not None else 'dense_seconds'
            raise CostTableError(f'latency table {path}: {what} must be a number of seconds '
                                 f'>= 0 (dense_seconds > 0); {PROFILE_HINT}')
        if sum(seconds) >= dense:
            raise CostTableError(
                f'latency table {path}: the units save {sum(seconds):.4g} s together, not less '
                f'than the dense call ({dense:.4g} s), so no keep ratio is left for the rest of '
                f'the model; re-profile with more --repeats on a quieter device')
        return cls(str(path), data['device'], data['dtype'], data['resolution'], data['batch'],
                   data['torch_version'], float(dense), names, [float(s) for s in seconds])


def _non_negative(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value >= 0


@COST_MODELS.register_module(name='macs')
class MacCosts:
    """The model's MAC table in its ``mac_convention`` (the paper's budget)."""

    def costs(self, unet: nn.Module, units: Sequence[Unit], space: str,
              macs: MacTable) -> MacTable:
        return macs


@COST_MODELS.register_module(name='latency')
class LatencyCosts:
    """A measured latency table (``tools/profile_units.py``) of the model's units.

    Args:
        table: path of the table's JSON file; profile on the device, dtype,
            resolution and batch the experts will be deployed at.
    """

    def __init__(self, table: str) -> None:
        self.table = table

    def costs(self, unet: nn.Module, units: Sequence[Unit], space: str,
              macs: MacTable) -> LatencyTable:
        return LatencyTable.load(self.table, unet, units, space)
