"""Train a config with mmengine's Runner (``ShardAwareRunner``).

    python tools/train.py configs/alter/sd21_e4_s35.py [--work-dir DIR]
        [--cfg-options k=v ...] [--resume [PATH]] [--amp] [--launcher none|pytorch] [--fsdp]
"""
import argparse
import os.path as osp

import torch
from mmengine.config import Config, DictAction

from alter.engine.checkpoint import trust_local_checkpoints
from alter.engine.runner import ShardAwareRunner
from alter.models.alter import ALTER
from alter.registry import MODELS
from alter.engine.run_config import check_and_record


def parse_args() -> argparse.Namespace:
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
    return parser.parse_args()


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


def main() -> None:
    args = parse_args()
    trust_local_checkpoints()
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        use_amp(cfg.optim_wrapper)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    if args.fsdp and any(hook.get('type') == 'EMAHook' for hook in cfg.get('custom_hooks', [])):
        raise ValueError("--fsdp: mmengine's EMAHook deep-copies the whole model, which FSDP "
                         "cannot; use dict(type='UNetEMAHook', momentum=...) in custom_hooks, "
                         'which averages the UNet alone, sharded like it')
    if args.fsdp and args.launcher == 'none':
        raise ValueError('--fsdp shards the model over distributed ranks: launch with '
                         'tools/dist_train.sh (--launcher pytorch)')
    if args.launcher != 'none':
        setup_distributed(cfg, args.fsdp)
    check_and_record(cfg, resuming=bool(args.resume))
    ShardAwareRunner.from_cfg(cfg).train()
    if torch.distributed.is_initialized():
        # Gloo worker threads still alive at interpreter exit can abort the
        # process ("terminate called without an active exception") after a good run.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
