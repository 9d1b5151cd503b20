"""Export a training checkpoint as a deployable checkpoint directory.

    python tools/export.py work_dirs/shapes_e4_s35/iter_600.pth --out checkpoints/my_alter

Writes ``unet/`` (``transformer/`` for a diffusion transformer; diffusers layout,
safetensors) and, for ALTER models, ``experts.json`` (masks, routing table, keep
ratios and the fingerprint of the weights written, which ``apply_experts`` checks
the UNet against); the output
directory is replaced as a whole. The model is rebuilt from the run's record
``run_config.json`` beside the checkpoint (or ``--config``), never from the
config text stored in the checkpoint, and the checkpoint is loaded without
unpickling code. Runs with mmengine's ``EMAHook`` (dense teachers) store EMA
weights as the checkpoint's weights already; ALTER runs with ``UNetEMAHook``
export theirs with ``--ema``.
"""
import argparse
from pathlib import Path

from mmengine.runner.checkpoint import load_state_dict

from alter.engine.checkpoint import load_checkpoint_file, state_dict_mismatch
from alter.engine.run_config import recorded_model_config
from alter.inference.experts import save_checkpoint
from alter.registry import MODELS
from alter.units.backbones import backbone_of
from alter.utils.cli import InputError, run_tool
from alter.utils.config import load_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='an iter_*.pth written by tools/train.py')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--config', help="config (default: the run's run_config.json beside "
                        'the checkpoint)')
    parser.add_argument('--half', action='store_true', help='store the UNet in float16')
    parser.add_argument('--ema', action='store_true',
                        help='export the UNet averaged by UNetEMAHook (checkpoint["ema_unet"])')
    return parser.parse_args(argv)


def training_checkpoint(path: str) -> dict:
    """The checkpoint at ``path``, refused unless tools/train.py could have written it."""
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('state_dict'), dict):
        what = f'a plain state dict ({len(checkpoint)} entries)' if isinstance(checkpoint, dict) \
            else f'a {type(checkpoint).__name__}'
        raise InputError(f'{path} is {what}, not a training checkpoint: export takes an '
                         'iter_*.pth written by tools/train.py (with meta and state_dict); a '
                         'UNet alone is saved with save_checkpoint or UNet.save_pretrained')
    return checkpoint


def main(argv=None) -> None:
    args = parse_args(argv)
    checkpoint = training_checkpoint(args.checkpoint)
    model_cfg = load_config(args.config).model if args.config else \
        recorded_model_config(Path(args.checkpoint).parent)
    model = MODELS.build(model_cfg)
    mismatch = state_dict_mismatch(model, checkpoint['state_dict'])
    if mismatch:
        raise InputError(f'{args.checkpoint} does not fit the model of '
                         f'{args.config or "the run_config.json beside it"} ({mismatch}); pass '
                         'the config it was trained with (--config)')
    load_state_dict(model, checkpoint['state_dict'], strict=True)
    if args.ema:
        if 'ema_unet' not in checkpoint:
            raise InputError(f'{args.checkpoint} holds no ema_unet: train with UNetEMAHook')
        model.unet.load_state_dict(checkpoint['ema_unet'])
    experts = model.export_experts() if hasattr(model, 'export_experts') else None
    save_checkpoint(args.out, model.unet, experts, half=args.half)
    folder = backbone_of(model.unet).pipeline_attribute  # unet/, or transformer/
    print(f'wrote {args.out}: {folder}/' + (' + experts.json' if experts else ''))


if __name__ == '__main__':
    run_tool(main)
