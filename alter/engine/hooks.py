"""Hooks of ALTER runs."""
from pathlib import Path
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

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
        model = getattr(runner.model, 'module', runner.model)
        return atomic_write_json(Path(runner.work_dir) / self.filename, model.export_experts())
