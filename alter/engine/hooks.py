"""Hooks of ALTER runs."""
from pathlib import Path
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

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
        if not is_main_process():
            return None
        return atomic_write_json(Path(runner.work_dir) / self.filename,
                                 bare(runner.model).export_experts())


@HOOKS.register_module()
class UNetEMAHook(Hook):
    """Exponential moving average of the trained UNet alone.

    mmengine's ``EMAHook`` averages a copy of the whole model; for ALTER that
    would copy the frozen teacher and encoders too (gigabytes on SD2.1). This
    keeps one averaged UNet, saves it as ``checkpoint['ema_unet']`` and
    restores it on resume; ``tools/export.py --ema`` exports it.

    Args:
        momentum: weight of the new parameters per update (decay = 1 - momentum).
        begin_iter: first iteration that updates the average.
    """

    priority = 'NORMAL'

    def __init__(self, momentum: float = 1e-4, begin_iter: int = 0) -> None:
        self.momentum, self.begin_iter = momentum, begin_iter
        self.ema = None

    def before_run(self, runner) -> None:
        from mmengine.model import ExponentialMovingAverage
        self.ema = ExponentialMovingAverage(bare(bare(runner.model).unet), momentum=self.momentum)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 > self.begin_iter:
            self.ema.update_parameters(bare(bare(runner.model).unet))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['ema_unet'] = self.ema.module.state_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'ema_unet' in checkpoint:
            self.ema.module.load_state_dict(checkpoint['ema_unet'])
