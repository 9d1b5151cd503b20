"""Train a config with mmengine's Runner (``ShardAwareRunner``).

    python tools/train.py configs/alter/sd21_e4_s35.py [--work-dir DIR]
        [--cfg-options k=v ...] [--resume [PATH]] [--amp] [--launcher none|pytorch] [--fsdp]

``--resume`` continues from the checkpoint ``last_checkpoint`` names in the work
dir or, if that is missing or incomplete, from the newest complete ``iter_*.pth``
(and says so); ``--resume PATH`` continues from PATH, refused if the run that
wrote it recorded a different config. Checkpoints are loaded without unpickling
code (``alter.engine.checkpoint``).
"""
import argparse
import os.path as osp
from pathlib import Path
from typing import Optional

import torch
from mmengine.config import Config, DictAction

from alter.engine.checkpoint import incomplete, resume_checkpoint, trust_local_checkpoints
from alter.engine.run_config import check_and_record, check_phase_length
from alter.engine.runner import ShardAwareRunner
from alter.models.alter import ALTER, bare
from alter.registry import MODELS
from alter.utils.cli import InputError, run_tool
from alter.utils.config import load_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train ALTER (or a dense model) from a config.')
    parser.add_argument('config', help='config file, e.g. configs/alter/sd21_e4_s35.py')
    parser.add_argument('--work-dir', help='where logs, checkpoints and the expert file go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='PATH',
                        help='resume from PATH, or from the latest checkpoint of the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, e.g. model.num_experts=10')
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                        help='job launcher (pytorch = torchrun)')
    parser.add_argument('--fsdp', action='store_true',
                        help='shard the UNet and the teacher over the ranks (FSDP2) instead of '
                        'replicating them (DDP); for runs that do not fit in GPU memory')
    return parser.parse_args(argv)


def use_amp(optim_wrapper: dict) -> None:
    """Switch every optimiser wrapper of the config (one, or one per sub-module) to AMP."""
    entries = [optim_wrapper] if 'optimizer' in optim_wrapper else \
        [v for v in optim_wrapper.values() if isinstance(v, dict)]
    for entry in entries:
        entry['type'] = 'AmpOptimWrapper'
        entry.setdefault('loss_scale', 'dynamic')


def setup_distributed(cfg: Config, fsdp: bool) -> None:
    """One wrapper per trained sub-module (UNet, hypernetwork), as their train_step needs:
    DDP, or FSDP2 for the UNet and the teacher (``alter.engine.parallel``).

    Without CUDA, the gloo process group is started here: mmengine's own
    initialisation calls torch.cuda.set_device.
    """
    sharded = ['unet', 'teacher'] if issubclass(MODELS.get(cfg.model.type), ALTER) else ['unet']
    wrapper = dict(type='SubmoduleParallel', shard=sharded if fsdp else [])
    if not torch.cuda.is_available():
        torch.distributed.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(wrapper, **cfg.get('model_wrapper_cfg', {}))


def resume_from(resume: Optional[str], work_dir: str) -> Optional[Path]:
    """The checkpoint to continue from: ``--resume PATH``, or for a bare ``--resume`` the
    work dir's latest complete one (None: start at iteration 0)."""
    if resume is None:
        return None
    if resume != 'auto':
        problem = incomplete(Path(resume))
        if problem:
            raise InputError(f'--resume {resume}: the checkpoint is {problem}; pass a complete '
                             'iter_*.pth, or --resume alone for the work dir\'s latest')
        print(f'resuming from {resume}')
        return Path(resume)
    checkpoint, note = resume_checkpoint(work_dir)
    print(note)
    return checkpoint


def log_budget(runner: ShardAwareRunner) -> None:
    """Before an ALTER run trains: the units found, the MACs per call and the sparsity
    asked for against the largest reachable one."""
    model = bare(runner.model)
    if isinstance(model, ALTER):
        table = model.costs[model.mac_convention]
        for line in table.summary(type(bare(model.unet)).__name__):
            runner.logger.info(line)
        runner.logger.info(f'target sparsity {1 - model.target_keep:.3f} '
                           f'(keep ratio {model.target_keep:.3f})')


def main(argv=None) -> None:
    args = parse_args(argv)
    trust_local_checkpoints()
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_phase_length(cfg)
    if args.amp:
        use_amp(cfg.optim_wrapper)
    checkpoint = resume_from(args.resume, cfg.work_dir)
    if checkpoint is not None:
        cfg.resume, cfg.load_from = True, str(checkpoint)
    if args.fsdp and any(hook.get('type') == 'EMAHook' for hook in cfg.get('custom_hooks', [])):
        raise ValueError("--fsdp: mmengine's EMAHook deep-copies the whole model, which FSDP "
                         "cannot; use dict(type='UNetEMAHook', momentum=...) in custom_hooks, "
                         'which averages the UNet alone, sharded like it')
    if args.fsdp and args.launcher == 'none':
        raise ValueError('--fsdp shards the model over distributed ranks: launch with '
                         'tools/dist_train.sh (--launcher pytorch)')
    if args.launcher != 'none':
        setup_distributed(cfg, args.fsdp)
    check_and_record(cfg, resuming=bool(args.resume), checkpoint=checkpoint)
    runner = ShardAwareRunner.from_cfg(cfg)
    log_budget(runner)
    runner.train()
    if torch.distributed.is_initialized():
        # Gloo worker threads still alive at interpreter exit can abort the
        # process ("terminate called without an active exception") after a good run.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    run_tool(main)
