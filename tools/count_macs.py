"""Per-unit and total MACs of a config's backbone.

    python tools/count_macs.py configs/_base_/models/sd21_unet.py --resolution 768
    python tools/count_macs.py configs/_base_/models/dit_xl2.py --convention with_attention
    python tools/count_macs.py configs/alter/sd21_e4_s35.py --cfg-options model.pretrained=DIR

Builds the denoiser (UNet or diffusion transformer) from the config's
architecture with random weights (no weights needed; with ``model.pretrained``
the architecture, latent scale and resolution are read from the folder's JSON
configs, see ``alter.utils.config``), finds the pruning space's units and
prints their MACs per model call at batch 1; ``--out`` writes the table as
JSON. ``--dtype bfloat16`` halves the memory of large models (the count does
not depend on it).
"""
import argparse

import torch
from mmengine.config import DictAction
from alter.registry import MODELS, PRUNING_SPACES
from alter.units.macs import CONVENTIONS, mac_table
from alter.utils.cli import positive_int, run_tool
from alter.utils.config import load_config
from alter.utils.io import atomic_write_json


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file with model.unet (and optionally model.space)')
    parser.add_argument('--resolution', type=positive_int, help='image size in pixels '
                        '(default: model.resolution of the config)')
    parser.add_argument('--convention', choices=CONVENTIONS, default='fvcore')
    parser.add_argument('--space', help='pruning space (default: model.space.type of the config)')
    parser.add_argument('--context-length', type=positive_int,
                        help='text tokens (default: model.context_length)')
    parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                        help='dtype of the random weights (the count is the same)')
    parser.add_argument('--out', help='write the table to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, e.g. model.pretrained=/path/to/folder')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    model = load_config(args.config, args.cfg_options).model
    with torch.no_grad():  # (no_grad, not set_grad_enabled: main is also called in-process)
        # Built in the dtype directly: a float32 copy of SDXL alone would take 10 GB.
        torch.set_default_dtype(getattr(torch, args.dtype))
        unet = MODELS.build(dict(model.unet, load_weights=False)).eval()
        torch.set_default_dtype(torch.float32)
        space_name = args.space or model.get('space', {}).get('type', 'paper')
        units = PRUNING_SPACES.build(dict(type=space_name)).find(unet)
        table = mac_table(unet, units, space_name, args.resolution or model.resolution,
                          model.get('latent_scale', 8),
                          args.context_length or model.get('context_length', 77),
                          args.convention)

    scale, prefix = table.display_unit()
    print(f'{"unit":<18}{"kind":<7}{prefix + "MACs":>10}{"% of model":>12}')
    for name, kind, macs in zip(table.unit_names, table.unit_kinds, table.unit_macs):
        print(f'{name:<18}{kind:<7}{macs / scale:>10.3f}{100 * macs / table.total_macs:>10.2f}%')
    print()
    print('\n'.join(table.summary(type(unet).__name__)))
    if args.out:
        atomic_write_json(args.out, table.to_dict())
        print(f'wrote {args.out}')


if __name__ == '__main__':
    run_tool(main)
