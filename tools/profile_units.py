"""Measure what skipping each prunable unit saves inside one whole denoiser call.

    python tools/profile_units.py CONFIG [--device cuda] [--resolution PX] [--batch N]
        [--repeats 20] [--out unit_latency.json]

The denoiser (``model.unet`` of CONFIG, random weights: latency does not depend
on them) runs through its backbone adapter with its example conditioning, the
way sampling calls it: ``--batch`` samples per call (classifier-free guidance
doubles the images of a generation), a latent of ``--resolution`` / latent
scale. Timed functions, interleaved (dense, unit 1 skipped, unit 2 skipped, ...,
every unit skipped) with medians over ``--repeats``: a unit's cost is the
dense call's median minus the median of the call with that unit skipped by the
hard-skip path of ``UnitGating`` (the path routed sampling takes), scaled so that
the costs add up to what skipping every unit saves. A unit whose saving is below
the timing noise gets cost 0 (its measured median is kept in the table). ``--out`` writes the table that the ``latency`` cost model reads
(``model.cost_model=dict(type='latency', table=...)``), recording device,
dtype, resolution, batch, clock and torch version. On CUDA it runs in float16.
``--clock cpu`` times the process's CPU seconds instead of wall time: on a CPU
shared with other processes it keeps their load out of the table
(``alter.utils.timing``).
"""
import argparse
import random
import warnings

import torch

from alter.models.conditioning import context_to, map_context
from alter.registry import MODELS, PRUNING_SPACES
from alter.units.backbones import backbone_of
from alter.units.costs import LATENCY_FORMAT
from alter.units.gating import UnitGating
from alter.units.macs import architecture_key, mac_table
from alter.utils.cli import InputError, positive_int, run_tool
from alter.utils.config import load_config
from alter.utils.io import atomic_write_json
from alter.utils.timing import CLOCKS, device_name, device_sync, interleaved

DTYPES = dict(float32=torch.float32, float16=torch.float16, bfloat16=torch.bfloat16)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config with model.unet (architecture) and model.space')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=sorted(DTYPES),
                        help='default: float16 on CUDA, float32 elsewhere')
    parser.add_argument('--resolution', type=positive_int,
                        help='image side in pixels (default: the config\'s model.resolution)')
    parser.add_argument('--batch', type=positive_int, default=2,
                        help='samples per denoiser call (default 2: one image with guidance)')
    parser.add_argument('--repeats', type=positive_int, default=20)
    parser.add_argument('--clock', choices=sorted(CLOCKS), default='wall',
                        help="'cpu': CPU seconds of this process (CPU devices; shared machines)")
    parser.add_argument('--space', help='pruning space (default: the config\'s model.space)')
    parser.add_argument('--out', help='write the latency table (JSON)')
    return parser.parse_args(argv)


def profile(call, gating: UnitGating, repeats: int, sync, clock) -> dict:
    """Median seconds of ``call()`` dense and with each unit skipped alone, interleaved in a
    new random order every repeat, and with every unit skipped."""
    n = len(gating)

    def with_keep(keep):
        def timed():
            gating.set_keep(keep)
            call()
        return timed

    fns = {'dense': with_keep(None)}
    fns.update({i: with_keep([j != i for j in range(n)]) for i in range(n)})
    # Every unit skipped is timed apart: the first full call after it would pay for
    # memory the allocator gave back meanwhile (on CPU, ~10 % of a call).
    try:
        times = interleaved(fns, repeats, sync, progress=f'{n + 1} calls per repeat',
                            clock=clock, shuffle=random.Random(0))
        times.update(interleaved({'all skipped': with_keep([False] * n)}, repeats, sync,
                                 clock=clock))
        return times
    finally:
        gating.set_keep(None)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (
        torch.float16 if device.type == 'cuda' else torch.float32)
    if args.clock == 'cpu' and device.type != 'cpu':
        raise InputError(f'--clock cpu times host work only; use --clock wall on {device}')
    model_cfg = load_config(args.config).model
    scale = model_cfg.get('latent_scale', 8)
    resolution = args.resolution or model_cfg.get('resolution')
    if resolution is None or resolution % scale:
        raise InputError(f'--resolution must be a multiple of the latent scale {scale} of '
                         f'{args.config} (got {resolution}); pass --resolution PX')
    latent = resolution // scale
    context_length = model_cfg.get('context_length', 77)
    space = args.space or model_cfg.get('space', dict(type='paper'))['type']
    torch.manual_seed(0)
    unet = MODELS.build(dict(model_cfg.unet, load_weights=False)).eval()
    backbone = backbone_of(unet, 'profile_units')
    units = PRUNING_SPACES.build(dict(type=space)).find(unet)
    macs = mac_table(unet, units, space, resolution, scale, context_length)  # shown beside
    unet = unet.to(device, dtype)
    gating = UnitGating(units)

    x = torch.randn(args.batch, backbone.latent_channels(unet), latent, latent,
                    device=device, dtype=dtype)
    example = backbone.example_context(unet, context_length, torch.Generator().manual_seed(0))
    context = context_to(map_context(lambda c: c.repeat(args.batch, *[1] * (c.dim() - 1)),
                                     example), device, dtype)
    t = torch.full((args.batch, ), 500, device=device)
    with torch.no_grad():
        times = profile(lambda: backbone.predict(unet, x, t, context), gating, args.repeats,
                        device_sync(device), CLOCKS[args.clock])

    dense, removable = times['dense'], times['dense'] - times['all skipped']
    saved = [max(dense - times[i], 0.0) for i in range(len(units))]
    if removable <= 0 or sum(saved) == 0:
        raise InputError(f'timing noise hides what the units cost on {device_name(device)} '
                         f'(dense {dense * 1e3:.3f} ms, every unit skipped '
                         f'{times["all skipped"] * 1e3:.3f} ms); profile with more --repeats, '
                         'a larger --batch or, on a shared CPU, --clock cpu')
    noise = [u.name for u, s in zip(units, saved) if s == 0]
    if noise:
        warnings.warn(f'{len(noise)} units save no measurable time and cost 0 in the table '
                      f'({", ".join(noise[:5])}{", ..." if len(noise) > 5 else ""}); more '
                      '--repeats or a quieter device may resolve them')
    # Single skips are shares, not a sum: what they save together differs from skipping
    # every unit at once (per-call overheads, caches). The costs keep each unit's share
    # and add up to the measured saving of skipping them all, so the budget's keep ratio
    # is exact with every unit kept and with every unit skipped.
    scale = removable / sum(saved)
    table = dict(
        format=LATENCY_FORMAT, device=device_name(device), dtype=str(dtype).split('.')[-1],
        resolution=resolution, latent_size=[latent, latent], batch=args.batch,
        torch_version=torch.__version__, repeats=args.repeats, clock=args.clock,
        architecture=dict(class_name=type(unet).__name__, key=architecture_key(unet)),
        space=space, dense_seconds=dense, all_skipped_seconds=times['all skipped'],
        savings_scale=scale,
        units=[dict(name=u.name, kind=u.kind, path=u.path, seconds=scale * s,
                    skipped_seconds=times[i]) for i, (u, s) in enumerate(zip(units, saved))])

    mac_share = macs.unit_fractions().tolist()
    print(f'{table["device"]}, {table["dtype"]}, {resolution} px (latent {latent}x{latent}), '
          f'batch {args.batch}, {args.repeats} interleaved repeats, {args.clock} clock')
    print(f'{"unit":32s} {"kind":12s} {"saved ms":>9s} {"latency %":>9s} {"MACs %":>7s}')
    for entry, share in zip(table['units'], mac_share):
        print(f'{entry["name"]:32s} {entry["kind"]:12s} {entry["seconds"] * 1e3:9.3f} '
              f'{100 * entry["seconds"] / dense:9.2f} {100 * share:7.2f}')
    print(f'dense call {dense * 1e3:.2f} ms; every unit skipped {times["all skipped"] * 1e3:.2f} '
          f'ms; single skips save {sum(saved) * 1e3:.2f} ms together (costs scaled by '
          f'{scale:.3f}); lowest keep ratio: latency {times["all skipped"] / dense:.3f}, MACs '
          f'({macs.convention}) {macs.min_keep_ratio:.3f}')
    if args.out:
        atomic_write_json(args.out, table)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    run_tool(main)
