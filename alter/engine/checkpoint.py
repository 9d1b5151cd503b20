"""Reading training checkpoints without running code from them, and choosing where to resume.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses the
``HistoryBuffer`` and numpy objects mmengine keeps in a checkpoint's message hub.
Falling back to ``weights_only=False`` would let a crafted ``.pth`` (a
``--resume PATH`` or ``load_from`` is not necessarily a trusted file) run code.
So checkpoints are unpickled with ``weights_only=True`` plus exactly the classes
mmengine writes (``checkpoint_globals``), and the one ``getattr`` its pickles
use (``HistoryBuffer``'s statistics methods) is replaced by a lookup that
allows nothing else. A file is also refused if it is not a complete archive,
holds non-finite weights, or carries ``meta['config']`` (Python source that
mmengine's ``Runner.resume`` would execute).
"""
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from alter.utils.cli import InputError
from alter.utils.io import PathLike
from alter.utils.tensors import non_finite

LAST_CHECKPOINT = 'last_checkpoint'  # mmengine's record of the newest checkpoint
CHECKPOINT_NAME = re.compile(r'iter_(\d+)\.pth')  # CheckpointHook's names in iteration-based runs
NUMPY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                np.uint64, np.float16, np.float32, np.float64)


def _history_buffer_method(owner: type, name: str) -> Callable:
    """Stands in for ``getattr`` while unpickling: only ``HistoryBuffer``'s statistics
    methods (``HistoryBuffer.__getstate__`` pickles them by name)."""
    if owner is not HistoryBuffer or name not in ('min', 'max', 'current', 'mean'):
        raise pickle.UnpicklingError(f'getattr({owner!r}, {name!r}) is not allowed')
    return getattr(HistoryBuffer, name)


def checkpoint_globals() -> List:
    """What an mmengine checkpoint's pickle may name beyond torch's own weights-only set."""
    array_rebuild = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, per version
    scalar_rebuild = np.float64(0).__reduce__()[0]
    return [HistoryBuffer, np.ndarray, np.dtype, array_rebuild, scalar_rebuild,
            *(type(np.dtype(t)) for t in NUMPY_DTYPES),
            (_history_buffer_method, 'builtins.getattr')]


def incomplete(path: Path) -> Optional[str]:
    """Why ``path`` is not a complete checkpoint file (None if it is one)."""
    if not path.is_file():
        return 'missing'
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; its directory comes last
        return (f'incomplete ({path.stat().st_size} bytes: empty, cut off while it was written, '
                'or not written by torch.save)')
    return None


def load_checkpoint_file(path: PathLike, map_location='cpu') -> dict:
    """A training checkpoint (or state dict) unpickled without running code.

    Raises ``InputError`` naming the file if it is incomplete, needs anything
    beyond tensors, containers and mmengine's logging objects, carries
    ``meta['config']`` or holds non-finite weights.
    """
    path = Path(path).expanduser()
    problem = incomplete(path)
    if problem:
        raise InputError(f'checkpoint {path} is {problem}; pass a complete iter_*.pth')
    try:
        with torch.serialization.safe_globals(checkpoint_globals()):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r'(Unsupported global: GLOBAL \S+|Trying to call reduce[^.\n]*|'
                          r'getattr\([^)]*\) is not allowed)', str(error))
        raise InputError(
            f'checkpoint {path} holds objects a checkpoint of tools/train.py never holds '
            f'({found.group(1) if found else "unsupported pickle content"}); it was not '
            'loaded, since unpickling it could run code. Use a checkpoint written by '
            'tools/train.py') from None
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if isinstance(meta, dict) and 'config' in meta:
        raise InputError(f"checkpoint {path} holds meta['config'], Python source that mmengine "
                         'would run when resuming; tools/train.py never writes it. Use a '
                         'checkpoint written by tools/train.py')
    bad = non_finite(weights_of(checkpoint))
    if bad:
        raise InputError(f'checkpoint {path} holds non-finite values in {len(bad)} weight '
                         f'tensors (first: {bad[0]}): it is corrupt, or was saved after training '
                         'diverged. Resume from an earlier checkpoint')
    return checkpoint


def weights_of(checkpoint) -> Dict[str, torch.Tensor]:
    """The weight tensors of a training checkpoint (``state_dict`` and ``ema_unet``), or of
    a plain state dict."""
    if not isinstance(checkpoint, dict):
        return {}
    if 'state_dict' not in checkpoint:
        return {k: v for k, v in checkpoint.items() if torch.is_tensor(v)}
    found = dict(checkpoint['state_dict'])
    found.update({f'ema_unet.{k}': v for k, v in checkpoint.get('ema_unet', {}).items()})
    return found


def trust_local_checkpoints() -> None:
    """Make mmengine load local checkpoints (resume, ``load_from``) with
    ``load_checkpoint_file``."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)


def state_dict_mismatch(model: nn.Module, state_dict: Dict[str, torch.Tensor],
                        partial: bool = False) -> Optional[str]:
    """How ``state_dict`` fails to fit ``model`` (None if it fits): differing shapes, and
    unless ``partial``, missing or unexpected keys."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if torch.is_tensor(v)}
    problems = [f'{k}: {given[k]} in the checkpoint, {own[k]} in the model'
                for k in sorted(set(own) & set(given)) if own[k] != given[k]]
    if not partial:
        problems += [f'{k} missing' for k in sorted(set(own) - set(given))]
        problems += [f'{k} unexpected' for k in sorted(set(given) - set(own))]
    if not problems:
        return None
    return f'{len(problems)} differences, e.g. ' + '; '.join(problems[:5])


def resume_checkpoint(work_dir: PathLike) -> Tuple[Optional[Path], str]:
    """The checkpoint ``--resume`` continues from, and a line saying why.

    The file ``last_checkpoint`` names, looked up by its name in ``work_dir``
    (so a copied work dir resumes from its own copy); if there is no such
    record, or the file is missing or incomplete, the newest complete
    ``iter_*.pth``; None if there is none.
    """
    work_dir = Path(work_dir)
    record = work_dir / LAST_CHECKPOINT
    if record.is_file():
        named = work_dir / Path(record.read_text().strip()).name
        problem = incomplete(named)
        if problem is None:
            return named, f'resuming from {named} ({LAST_CHECKPOINT})'
        note = f'{record} names {named.name}, which is {problem}'
    else:
        note = f'{work_dir} has no {LAST_CHECKPOINT}'
    numbered = {p: CHECKPOINT_NAME.fullmatch(p.name) for p in work_dir.glob('iter_*.pth')}
    found = sorted((p for p, m in numbered.items() if m), key=lambda p: -int(numbered[p][1]))
    newest = next((p for p in found if incomplete(p) is None), None)
    if newest is None:
        return None, f'{note}, and no complete iter_*.pth: training starts at iteration 0'
    return newest, f'{note}: resuming from {newest}, the newest complete checkpoint'
