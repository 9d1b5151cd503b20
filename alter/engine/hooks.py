"""Hooks of ALTER runs."""
import os
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook

from alter.engine.checkpoint import LAST_CHECKPOINT, state_dict_mismatch
from alter.engine.parallel import distribute_like, full_tensors
from alter.inference.experts import expert_record
from alter.models.alter import bare
from alter.registry import HOOKS
from alter.utils.cli import InputError
from alter.utils.io import atomic_write, atomic_write_json, atomic_write_text
from alter.utils.tensors import non_finite


@HOOKS.register_module(name='CheckpointHook')
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``, saving so that a kill or a full disk loses nothing.

    Configs name it ``CheckpointHook``: in the ``alter`` scope that name builds
    this class. mmengine's hook removes the oldest checkpoint before it writes
    the new one in place, so with ``max_keep_ckpts=1`` a kill during a save left
    no checkpoint at all. Here

    * a checkpoint is written to a temporary file beside it and renamed into
      place (a failed write removes the temporary file; one left by a kill is
      removed when the next run starts); then ``last_checkpoint`` is replaced;
    * checkpoints beyond ``max_keep_ckpts`` are removed only after that, so the
      newest complete checkpoint always exists;
    * a checkpoint whose weights hold a NaN or an infinity is refused;
    * a resumed checkpoint must fit the model exactly (keys and shapes), a
      ``load_from`` one in shape.

    Local folders only (mmengine's file backends have no rename).
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process():
            for stale in Path(self.out_dir).glob(f'.{self.filename_tmpl.format("*")}.*.tmp'):
                stale.unlink()

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        filename = self.filename_tmpl.format(step)
        kept = self._kept_with(step)
        if kept is not None:
            runner.message_hub.update_info('keep_ckpt_ids', kept)
        self.last_ckpt = os.path.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        options = dict(file_client_args=self.file_client_args, save_optimizer=self.save_optimizer,
                       save_param_scheduler=self.save_param_scheduler, meta=meta,
                       by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():  # gathers sharded state with rank 0; writes nothing
            runner.save_checkpoint(self.out_dir, filename, **options)
            return
        atomic_write(self.last_ckpt, lambda tmp: _save_synced(runner, tmp, options))
        atomic_write_text(Path(runner.work_dir) / LAST_CHECKPOINT, self.last_ckpt)
        if kept is not None:
            for old in set(self.keep_ckpt_ids) - set(kept):
                Path(self.out_dir, self.filename_tmpl.format(old)).unlink(missing_ok=True)
            self.keep_ckpt_ids = deque(kept)

    def _kept_with(self, step: int) -> Optional[List[int]]:
        """The steps whose checkpoints remain once ``step``'s is saved (None: all remain)."""
        if self.max_keep_ckpts <= 0:
            return None
        return ([s for s in self.keep_ckpt_ids if s != step] + [step])[-self.max_keep_ckpts:]

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        bad = non_finite(checkpoint.get('state_dict', {}))  # other ranks of sharded runs: {}
        if bad:
            raise FloatingPointError(
                f'not saving the checkpoint of iteration {runner.iter + 1}: {len(bad)} weight '
                f'tensors hold non-finite values (first: {bad[0]}); training diverged. Resume '
                'from the last checkpoint with a lower learning rate')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        resuming = runner._resume  # mmengine keeps the flag private
        mismatch = state_dict_mismatch(bare(runner.model), checkpoint.get('state_dict', checkpoint),
                                       partial=not resuming)
        if mismatch:
            source = runner._load_from or 'the checkpoint'
            raise InputError(f'{source} does not fit this model ({mismatch}): it was made by '
                             f'another config. {"Resume" if resuming else "Load"} it with the '
                             'config it was trained with')


def _save_synced(runner, path: str, options: dict) -> None:
    """``runner.save_checkpoint`` into ``path``, flushed to disk before it is renamed into place."""
    runner.save_checkpoint(os.path.dirname(path), os.path.basename(path), **options)
    with open(path, 'rb') as file:
        os.fsync(file.fileno())


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Stops training at the first iteration whose loss terms are not all finite.

    Runs before every other hook of the iteration, so nothing of that iteration
    (checkpoint, expert file) is written.
    """

    priority = 'HIGHEST'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        bad = {k: float(v) for k, v in (outputs or {}).items()
               if 'loss' in k and not torch.isfinite(torch.as_tensor(v)).all()}
        if bad:
            terms = ', '.join(f'{k}={v}' for k, v in bad.items())
            raise FloatingPointError(
                f'non-finite loss at iteration {runner.iter + 1}: {terms}. Training stopped '
                'before saving anything of this iteration; resume from the last checkpoint '
                '(--resume) with a lower learning rate, or check the data and the weights')


@HOOKS.register_module()
class ExpertExportHook(Hook):
    """Writes the expert file (masks, routing table, keep ratios) into the work dir.

    Written atomically every ``interval`` iterations and after training, so the
    file always describes the latest table in full, in the format (and with the
    checks) of ``alter.inference.experts.expert_record``.
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
        model = bare(runner.model)
        experts = model.export_experts()
        if not is_main_process():
            return None
        record = expert_record(experts, bare(model.unet))
        return atomic_write_json(Path(runner.work_dir) / self.filename, record)


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
