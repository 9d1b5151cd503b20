"""Export a training checkpoint as a deployable checkpoint directory.

    python tools/export.py work_dirs/shapes_e4_s35/iter_600.pth --out checkpoints/my_alter

Writes ``unet/`` (diffusers layout, safetensors) and, for ALTER models,
``experts.json`` (masks, routing table, keep ratios and the fingerprint of the
weights written, which ``apply_experts`` checks the UNet against). The model is rebuilt
from the config stored in the checkpoint (or ``--config``). Runs with
mmengine's ``EMAHook`` (dense teachers) store EMA weights as the checkpoint's
weights already; ALTER runs with ``UNetEMAHook`` export theirs with ``--ema``.
"""
import argparse

import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import load_state_dict

from alter.inference.experts import save_checkpoint
from alter.registry import MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='an iter_*.pth written by tools/train.py')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--config', help='config (default: the one stored in the checkpoint)')
    parser.add_argument('--half', action='store_true', help='store the UNet in float16')
    parser.add_argument('--ema', action='store_true',
                        help='export the UNet averaged by UNetEMAHook (checkpoint["ema_unet"])')
    args = parser.parse_args()

    checkpoint = torch.load(args.checkpoint, map_location='cpu', weights_only=False)
    cfg = Config.fromfile(args.config) if args.config else \
        Config.fromstring(checkpoint['meta']['cfg'], file_format='.py')
    model = MODELS.build(cfg.model)
    load_state_dict(model, checkpoint['state_dict'], strict=True)
    if args.ema:
        if 'ema_unet' not in checkpoint:
            raise KeyError(f'{args.checkpoint} holds no ema_unet: train with UNetEMAHook')
        model.unet.load_state_dict(checkpoint['ema_unet'])
    experts = model.export_experts() if hasattr(model, 'export_experts') else None
    save_checkpoint(args.out, model.unet, experts, half=args.half)
    print(f'wrote {args.out}: unet/' + (' + experts.json' if experts else ''))


if __name__ == '__main__':
    main()
