"""Refusing to resume a work dir with a different config.

The resolved config of each run is fingerprinted into ``<work_dir>/run_config.json``;
resuming compares against it. Keys that may legitimately change between the
original run and its resumption (where to write, how long to train, logging)
are left out of the comparison.
"""
import json
from pathlib import Path
from typing import Dict

from mmengine.config import Config

from alter.utils.io import atomic_write_json

FINGERPRINT = 'run_config.json'
MAY_CHANGE = ('work_dir', 'experiment_name', 'resume', 'load_from', 'launcher', 'train_cfg.max_iters', 'env_cfg',
              'default_hooks', 'log_level', 'log_processor', 'visualizer', 'vis_backends')


def _flatten(obj, prefix: str = '') -> Dict[str, str]:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f'{prefix}{key}.'))
        return out
    return {prefix[:-1]: json.dumps(obj, sort_keys=True, default=str)}


def _comparable(cfg: Config) -> Dict[str, str]:
    flat = _flatten(cfg.to_dict())
    return {k: v for k, v in flat.items()
            if not any(k == m or k.startswith(m + '.') for m in MAY_CHANGE)}


def check_and_record(cfg: Config, resuming: bool) -> None:
    """Raise if ``resuming`` a work dir whose recorded config differs; then record ``cfg``."""
    path = Path(cfg.work_dir) / FINGERPRINT
    current = _comparable(cfg)
    if resuming and path.exists():
        recorded = json.loads(path.read_text())
        differ = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        if differ:
            detail = '; '.join(f'{k}: {recorded.get(k, "<absent>")} -> {current.get(k, "<absent>")}'
                               for k in differ[:10])
            raise ValueError(f'cannot resume {cfg.work_dir}: it was made by a different config '
                             f'({len(differ)} settings differ: {detail}). Resume with the '
                             'original config, or start a new --work-dir.')
    atomic_write_json(path, current)
