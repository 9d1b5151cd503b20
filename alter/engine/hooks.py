"""Hooks of ALTER runs."""
from pathlib import Path
from typing import Dict, Optional

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from alter.engine.parallel import distribute_like, full_tensors
from alter.models.alter import bare
from alter.registry import HOOKS
from alter.utils.io import atomic_write_json


@HOOKS.register_module()
class ExpertExportHook(Hook):
    """Writes the expert file (masks, routing table, keep ratios) into the work dir.

    Written atomically every ``interval`` iterations and after training, so the
    file always describes the latest table in full.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 1000, filename: str = 'experts.json') -> None:
        self.interval = interval
        self.filename = filename

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval):
            self.export(runner)

    def after_train(self, runner) -> None:
        self.export(runner)

    def export(self, runner) -> Optional[Path]:
        # Every rank exports: the weights fingerprint gathers FSDP-sharded weights.
        experts = bare(runner.model).export_experts()
        if not is_main_process():
            return None
        return atomic_write_json(Path(runner.work_dir) / self.filename, experts)


@HOOKS.register_module()
class UNetEMAHook(Hook):
    """Exponential moving average of the trained UNet alone.

    mmengine's ``EMAHook`` averages a copy of the whole model; for ALTER that
    would copy the frozen teacher and encoders too (gigabytes on SD2.1). This
    averages the UNet's parameters only (sharded like them under FSDP), saves
    them as ``checkpoint['ema_unet']`` and restores them on resume;
    ``tools/export.py --ema`` exports them.

    Args:
        momentum: weight of the new parameters per update (decay = 1 - momentum).
        begin_iter: the average starts as a copy of the UNet after this
            iteration (0-based) and is updated after each later one.
    """

    priority = 'NORMAL'

    def __init__(self, momentum: float = 1e-4, begin_iter: int = 0) -> None:
        if not 0 < momentum <= 1:
            raise ValueError(f'momentum must lie in (0, 1], got {momentum}')
        self.momentum, self.begin_iter = momentum, begin_iter
        self.params: Dict[str, torch.Tensor] = {}
        self.averaged: Dict[str, torch.Tensor] = {}

    def before_run(self, runner) -> None:
        self.params = dict(bare(bare(runner.model).unet).named_parameters())
        self.averaged = {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        # Decided by the iteration alone, so a resumed run averages as an uninterrupted one.
        if runner.iter < self.begin_iter:
            return
        for name, average in self.averaged.items():
            if runner.iter == self.begin_iter:
                average.copy_(self.params[name])
            else:
                average.mul_(1 - self.momentum).add_(self.params[name], alpha=self.momentum)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['ema_unet'] = full_tensors(self.averaged)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'ema_unet' in checkpoint:
            with torch.no_grad():
                for name, average in self.averaged.items():
                    average.copy_(distribute_like(checkpoint['ema_unet'][name], average))
