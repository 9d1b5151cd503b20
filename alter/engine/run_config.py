"""A run's resolved config on record: refusing to resume with another one, rebuilding its model.

The resolved config of each run is flattened into ``<work_dir>/run_config.json``
(``{"model.num_experts": "4", ...}``, values as JSON); resuming compares against
the record of the work dir, and of the folder of a ``--resume PATH``
checkpoint. Keys that may legitimately change between the original run and its
resumption (where to write, how long to train, logging) are left out of the
record. ``tools/export.py`` rebuilds the model from the record's ``model.*``
entries, so it never runs code stored in a checkpoint.
"""
import json
import warnings
from pathlib import Path
from typing import Dict, Optional

from mmengine.config import Config

from alter.utils.cli import InputError
from alter.utils.io import atomic_write_json

FINGERPRINT = 'run_config.json'
# model.unet_step: how the UNet update runs, the same losses either way (FSDP refuses 'grouped').
# Validation reads the model and never changes what trains (alter.engine.validation).
MAY_CHANGE = ('work_dir', 'experiment_name', 'resume', 'load_from', 'launcher', 'train_cfg.max_iters', 'env_cfg',
              'default_hooks', 'log_level', 'log_processor', 'visualizer', 'vis_backends',
              'model.unet_step', 'train_cfg.val_interval', 'train_cfg.val_begin', 'val_cfg',
              'val_dataloader', 'val_evaluator')


def _flatten(obj, prefix: str = '') -> Dict[str, str]:
    if isinstance(obj, dict) and obj:  # an empty dict stays a value, so the record inverts
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f'{prefix}{key}.'))
        return out
    return {prefix[:-1]: json.dumps(obj, sort_keys=True, default=str)}


def _comparable(cfg: Config) -> Dict[str, str]:
    flat = _flatten(cfg.to_dict())
    return {k: v for k, v in flat.items()
            if not any(k == m or k.startswith(m + '.') for m in MAY_CHANGE)}


def _check_same(recorded_at: Path, current: Dict[str, str], what: str) -> None:
    recorded = json.loads(recorded_at.read_text())
    differ = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if differ:
        detail = '; '.join(f'{k}: {recorded.get(k, "<absent>")} -> {current.get(k, "<absent>")}'
                           for k in differ[:10])
        raise InputError(f'cannot resume {what}: it was made by a different config '
                         f'({len(differ)} settings differ from {recorded_at}: {detail}). Resume '
                         'with the original config, or start a new --work-dir.')


def check_and_record(cfg: Config, resuming: bool, checkpoint: Optional[Path] = None) -> None:
    """Raise if ``resuming`` a work dir, or a ``checkpoint`` of another run, whose recorded
    config differs; then record ``cfg`` in its work dir."""
    path = Path(cfg.work_dir) / FINGERPRINT
    current = _comparable(cfg)
    if resuming and path.exists():
        _check_same(path, current, str(cfg.work_dir))
    if checkpoint is not None and (checkpoint.parent / FINGERPRINT).exists():
        _check_same(checkpoint.parent / FINGERPRINT, current, str(checkpoint))
    atomic_write_json(path, current)


def check_phase_length(cfg: Config) -> None:
    """Refuse a hypernetwork phase (``model.hypernet_iters``, T_end) that trains a dense
    model under the initial all-ones masks; warn if it does not end within the run (a
    run trained in parts, resumed with a larger ``max_iters``, may mean that)."""
    t_end = cfg.model.get('hypernet_iters')
    if t_end is None:
        return
    max_iters = cfg.get('train_cfg', {}).get('max_iters')
    if type(t_end) is not int or t_end < 1:
        raise InputError(f'model.hypernet_iters={t_end!r}: the hypernetwork phase (T_end) must '
                         'last at least one iteration, or no expert is ever learned and a dense '
                         'model is trained; set a positive number (the paper: 30 % of the run)')
    if max_iters is not None and t_end > max_iters:
        warnings.warn(f'model.hypernet_iters={t_end} exceeds train_cfg.max_iters={max_iters}: '
                      'the hypernetwork phase does not end within this run, so the UNet never '
                      'trains under the final expert table; unless you will resume with more '
                      'iterations, set model.hypernet_iters <= train_cfg.max_iters')


def recorded_model_config(work_dir: Path) -> dict:
    """The model config a run recorded in ``<work_dir>/run_config.json``."""
    path = Path(work_dir) / FINGERPRINT
    if not path.is_file():
        raise InputError(f'no {FINGERPRINT} in {work_dir} to rebuild the model from: pass the '
                         'config the checkpoint was trained with (--config)')
    model: dict = {}
    for key, value in json.loads(path.read_text()).items():
        parts = key.split('.')
        if parts[0] != 'model':
            continue
        node = model
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = json.loads(value)
    return model
