"""Shared readers and figure helpers of the analysis scripts.

One reader per input format:

* ``read_experts``: an ALTER expert file (``experts.json``) -> ``Experts``;
* ``read_scalars``: a work dir's mmengine scalar logs (``<timestamp>/vis_data/scalars.json``,
  one JSON object per logged iteration) -> one DataFrame ordered by iteration;
* ``read_results``: results tables (the benchmark's ``{"rows": [...]}`` JSON, or CSV with
  the same columns) -> one DataFrame.
"""
import argparse
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

PathLike = Union[str, os.PathLike]

EXPERTS_FILE = 'experts.json'
LEVELS = ('down', 'mid', 'up')  # UNet levels, in forward order
FIGURE_FORMATS = ('png', 'pdf')
CONVENTIONS = ('fvcore', 'with_attention')  # MAC conventions of alter.units.macs


# --- experts.json --------------------------------------------------------------------------

@dataclass(frozen=True)
class Experts:
    """The deployable artifact of an ALTER run, as numpy arrays.

    Attributes:
        unit_names: the N_L units in the pruning space's order, e.g. ``down.0.res.0``.
        masks: (N_E, N_L) int array, 1 = the expert runs the unit, 0 = skips it.
        routing_table: (T,) int array, the expert of each training timestep 0..T-1.
        keep_ratio: realised keep ratio of the table per MAC convention (mean over timesteps).
        expert_keep_ratio: per MAC convention, the (N_E,) MAC keep ratio of each expert;
            empty for files written before ``macs`` was stored.
        target_keep_ratio: the budget p of the run, if stored.
    """

    unit_names: Tuple[str, ...]
    masks: np.ndarray
    routing_table: np.ndarray
    keep_ratio: Dict[str, float] = field(default_factory=dict)
    expert_keep_ratio: Dict[str, np.ndarray] = field(default_factory=dict)
    target_keep_ratio: Optional[float] = None

    @property
    def num_experts(self) -> int:
        return self.masks.shape[0]

    def usage(self) -> np.ndarray:
        """(N_E,) fraction of training timesteps routed to each expert."""
        return np.bincount(self.routing_table, minlength=self.num_experts) / len(self.routing_table)


def run_name(path: PathLike) -> str:
    """A run's display name: its work dir's folder name (also when given a file inside it)."""
    path = Path(path).resolve()
    return (path.parent if path.is_file() else path).name


def unit_level(name: str) -> str:
    """The UNet level (``down``, ``mid`` or ``up``) of a unit name: its first dot field."""
    level = name.split('.', 1)[0]
    if level not in LEVELS:
        raise ValueError(f'unit {name!r} has level {level!r}; expected a name starting with '
                         f'one of {LEVELS} followed by a dot')
    return level


def read_experts(path: PathLike) -> Experts:
    """Read ``experts.json`` from a work dir (or the file's own path) and check its shapes."""
    path = Path(path)
    if path.is_dir():
        path = path / EXPERTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f'no expert file at {path}; pass an ALTER work dir (it holds '
                                f'{EXPERTS_FILE} once ExpertExportHook has run) or the file itself')
    data = json.loads(path.read_text())
    missing = {'unit_names', 'expert_masks', 'routing_table'} - set(data)
    if missing:
        raise ValueError(f'{path} lacks {sorted(missing)}; is it an ALTER expert file?')
    names = tuple(data['unit_names'])
    rows = data['expert_masks']
    if not rows or any(len(row) != len(names) for row in rows):
        raise ValueError(f'{path}: expert_masks must be N_E x N_L with N_L = {len(names)} units, '
                         f'got rows of lengths {sorted({len(row) for row in rows})}')
    masks = np.asarray(rows, dtype=int)
    route = np.asarray(data['routing_table'], dtype=int)
    if route.ndim != 1 or len(route) == 0 or route.min() < 0 or route.max() >= len(masks):
        raise ValueError(f'{path}: routing_table must be a non-empty list of expert ids in '
                         f'0..{len(masks) - 1}')
    for name in names:
        unit_level(name)
    per_expert = {c: np.asarray(m['expert_keep_ratio'], dtype=float)
                  for c, m in data.get('macs', {}).items()}
    for convention, keep in per_expert.items():
        if keep.shape != (len(masks),):
            raise ValueError(f'{path}: macs.{convention}.expert_keep_ratio has shape {keep.shape}, '
                             f'expected ({len(masks)},)')
    return Experts(unit_names=names, masks=masks, routing_table=route,
                   keep_ratio=dict(data.get('keep_ratio', {})), expert_keep_ratio=per_expert,
                   target_keep_ratio=data.get('target_keep_ratio'))


# --- scalar logs ---------------------------------------------------------------------------

def _read_json_lines(path: Path) -> List[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f'{path}:{number} is not a JSON object: {error}') from None
    return rows


def scalar_logs(work_dir: PathLike) -> List[Path]:
    """The ``<timestamp>/vis_data/scalars.json`` files of a work dir, oldest run first.

    mmengine names each run's folder ``YYYYMMDD_HHMMSS``, so name order is start order.
    """
    logs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    if not logs:
        raise FileNotFoundError(f'no */vis_data/scalars.json under {work_dir}; pass an mmengine '
                                f'work dir (the folder given to tools/train.py --work-dir)')
    return logs


def read_scalars(work_dir: PathLike) -> pd.DataFrame:
    """All training rows of a work dir's scalar logs, one row per logged iteration.

    Resumed runs write a new timestamp folder that repeats the iterations after the
    resumed checkpoint; the later run wins on duplicates. Rows without ``iter``
    (validation summaries) are not training rows and are left out. Keys a row does
    not log are NaN.
    """
    frames = [pd.DataFrame.from_records(_read_json_lines(path)) for path in scalar_logs(work_dir)]
    frames = [frame for frame in frames if 'iter' in frame]
    if not frames:
        raise ValueError(f'the scalar logs of {work_dir} hold no training rows (no "iter" key)')
    scalars = pd.concat(frames, ignore_index=True)
    scalars = scalars[scalars['iter'].notna()]
    scalars = scalars.drop_duplicates('iter', keep='last').sort_values('iter')
    return scalars.astype({'iter': int}).reset_index(drop=True)


# --- results tables ------------------------------------------------------------------------

def _read_results_json(path: Path) -> pd.DataFrame:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get('rows'), list):
        raise ValueError(f'{path}: expected a results JSON {{"rows": [{{...}}, ...], ...}} '
                         f'as written by tools/demo.py')
    return pd.DataFrame.from_records(data['rows'])


RESULT_READERS: Dict[str, Callable[[Path], pd.DataFrame]] = {
    '.json': _read_results_json,
    '.csv': pd.read_csv,
}


def read_results(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Rows of one or more results files (JSON or CSV), with a ``source`` column (file stem)."""
    frames = []
    for path in map(Path, paths):
        reader = RESULT_READERS.get(path.suffix.lower())
        if reader is None:
            raise ValueError(f'{path}: unknown results format {path.suffix!r}; '
                             f'expected one of {sorted(RESULT_READERS)}')
        frames.append(reader(path).assign(source=path.stem))
    if not frames:
        raise ValueError('no results files given')
    return pd.concat(frames, ignore_index=True)


# --- figures -------------------------------------------------------------------------------

def expert_colors(num_experts: int) -> List[Tuple[float, ...]]:
    """One colour per expert, the same in every figure."""
    if num_experts <= 10:
        return list(colormaps['tab10'].colors[:num_experts])
    if num_experts <= 20:
        return list(colormaps['tab20'].colors[:num_experts])
    return [tuple(c) for c in colormaps['turbo'](np.linspace(0, 1, num_experts))]


def file_stem(text: str) -> str:
    """``text`` as a safe file-name part (metric names hold ``/``)."""
    return re.sub(r'[^A-Za-z0-9._-]+', '-', text).strip('-')


def save_figure(fig: Figure, out_dir: PathLike, stem: str, dpi: int = 150) -> List[Path]:
    """Write ``<out_dir>/<stem>.png`` and ``.pdf``, each atomically (temp file, then rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in FIGURE_FORMATS:
        target = out_dir / f'{stem}.{fmt}'
        fd, tmp = tempfile.mkstemp(prefix=f'.{target.name}.', suffix='.tmp', dir=out_dir)
        os.close(fd)
        try:
            fig.savefig(tmp, format=fmt, dpi=dpi)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        written.append(target)
    return written


def add_convention_argument(parser: argparse.ArgumentParser) -> None:
    """``--convention``: the MAC convention of keep ratios (the paper's budget uses fvcore)."""
    parser.add_argument('--convention', default='fvcore', choices=CONVENTIONS,
                        help='MAC convention of keep ratios (default fvcore, the budget\'s)')
