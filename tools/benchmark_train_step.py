"""Time of ALTER's UNet training step under each registered step, and the hypernetwork step's share.

    python tools/benchmark_train_step.py                          # SD2.1 and the embedded model
    python tools/benchmark_train_step.py --models shapes --experts 4 10 --batch 16

UNet step: one forward and backward of the student under per-sample expert
masks, with ALTER's loss (denoising, output and feature KD against references
from a dense forward), through the registered steps (``alter.models.unet_steps``):
``blended`` (every unit runs, switched-off ones blended away), ``selected`` (each
unit runs on the samples whose expert keeps it) and ``grouped`` (one
hard-skipped forward and backward per expert present). Random weights;
N_E random masks, each switching units off in random order while its keep ratio
(MAC-weighted, whole UNet, ``fvcore``) stays at or above 1 - ``--sparsity``;
per-sample random timesteps routed by N_E equal timestep intervals, as a
balanced router routes them. The optimiser step, the same in all, is left out.
Each repeat draws a new batch; every step runs on it, interleaved; medians.

Hypernetwork share (ALTER configs): whole ``ALTER.train_step`` iterations
with and without the hypernetwork update (before and after T_end), learning
rates 0 so that nothing changes between repeats; the freshly built
hypernetwork's gate offset is set so that its mask table keeps 1 - ``--sparsity``.
"""
import argparse
import statistics
from typing import Dict, List

import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper, OptimWrapperDict

from alter.models.alter import ALTER, DEFAULT_LOSS_WEIGHTS
from alter.models.losses import capture_block_outputs, unet_objective
from alter.models.unet_steps import take_samples
from alter.registry import MODELS, PRUNING_SPACES, UNET_STEPS
from alter.units.backbones import backbone_of
from alter.units.gating import UnitGating
from alter.units.macs import MacTable, mac_table
from alter.utils.cli import open_fraction, positive_int, run_tool
from alter.utils.config import load_config
from alter.utils.timing import device_name, device_sync, interleaved

# Latent side without --latent: SD2.1 16, the others their config's resolution.
BENCHMARKS = {
    'sd21': 'configs/_base_/models/sd21_unet.py',
    'shapes': 'configs/alter/shapes_e4_s35.py',  # the embedded benchmark
    'tiny': 'configs/alter/tiny_e4_s35.py',  # tests
}
STEPS = ('blended', 'selected', 'grouped')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', choices=sorted(BENCHMARKS),
                        default=['sd21', 'shapes'])
    parser.add_argument('--experts', type=positive_int, nargs='+', default=[4, 10],
                        help='numbers of experts N_E')
    parser.add_argument('--sparsity', type=open_fraction, default=0.35)
    parser.add_argument('--batch', type=positive_int, nargs='+', default=[8, 16],
                        help='batch size per model, in --models order (the last one repeats)')
    parser.add_argument('--latent', type=positive_int,
                        help='latent side of the UNet-step timing (default: 16 for SD2.1, the '
                        "config's for the others)")
    parser.add_argument('--repeats', type=positive_int, default=3)
    parser.add_argument('--threads', type=positive_int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--no-share', action='store_true',
                        help='skip the hypernetwork-share measurement')
    return parser.parse_args(argv)


def budget_masks(costs: MacTable, num_experts: int, keep: float,
                 generator: torch.Generator) -> torch.Tensor:
    """(N_E, N_L) masks: units switched off in random order while the keep ratio stays >= keep."""
    masks = torch.ones(num_experts, len(costs.unit_names), dtype=torch.float64)
    for mask in masks:
        for unit in torch.randperm(len(mask), generator=generator).tolist():
            mask[unit] = 0
            if costs.keep_ratio(mask).item() < keep:
                mask[unit] = 1
    return masks.float()


def unet_step_times(unet, costs: MacTable, num_experts: int, batch: int, latent: int,
                    context_length: int, args, device) -> Dict[str, float]:
    """Median seconds of each UNet step on random batches; groups and keep ratio per batch."""
    generator = torch.Generator().manual_seed(num_experts)
    gating = UnitGating(PRUNING_SPACES.build(dict(type='paper')).find(unet))
    masks = budget_masks(costs, num_experts, 1 - args.sparsity, generator).to(device)
    backbone = backbone_of(unet)
    channels = backbone.latent_channels(unet)
    dim = backbone.context_dim(unet)
    batches: List[dict] = []
    for _ in range(args.repeats + 1):  # one warm-up call of each step, then the repeats
        x = torch.randn(batch, channels, latent, latent, generator=generator).to(device)
        timesteps = torch.randint(0, 1000, (batch, ), generator=generator).to(device)
        context = torch.randn(batch, context_length, dim, generator=generator).to(device)
        with torch.no_grad(), capture_block_outputs(unet) as features:  # dense references
            prediction = backbone.predict(unet, x, timesteps, context)
        reference = (torch.randn_like(prediction), prediction + 0.1 * torch.randn_like(prediction),
                     [f + 0.1 * torch.randn_like(f) for f in features])
        batches.append(dict(inputs=(x, timesteps, context, reference),
                            experts=timesteps * num_experts // 1000))

    def loss_of(inputs):
        def loss(index):
            x, timesteps, context, (target, teacher, teacher_features) = \
                take_samples(inputs, index)
            with capture_block_outputs(unet) as features:
                prediction = backbone.predict(unet, x, timesteps, context)
            return unet_objective(prediction, target, teacher, features, teacher_features,
                                  DEFAULT_LOSS_WEIGHTS, F.mse_loss)
        return loss

    # The optimiser holds a stand-in parameter: the UNet's gradients are computed and
    # then dropped, the optimiser step (the same for all) is not timed.
    wrapper = OptimWrapper(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0))

    def runner(name):
        step, calls = UNET_STEPS.build(dict(type=name)), iter(batches)

        def run():
            unet.zero_grad(set_to_none=True)
            data = next(calls)
            step(unet, gating, masks, data['experts'], loss_of(data['inputs']), wrapper)
        return run

    times = interleaved({name: runner(name) for name in STEPS}, args.repeats,
                        device_sync(device))
    unet.zero_grad(set_to_none=True)
    gating.remove()
    timed = batches[1:]
    times['groups'] = statistics.mean(len(set(b['experts'].tolist())) for b in timed)
    times['keep'] = statistics.mean(costs.keep_ratio(masks[b['experts']].double().cpu())
                                    .mean().item() for b in timed)
    return times


def hypernetwork_share(config: str, batch: int, args, device) -> Dict[str, float]:
    """Median seconds of ALTER iterations with and without the hypernetwork update."""
    cfg = load_config(config).model
    # Random weights, batches of latents and contexts: no encoders, no caption dropout.
    model_cfg = dict(cfg, pretrained=None, autoencoder=None, text_encoder=None, cond_dropout=0.0)
    model_cfg['unet'] = dict(cfg.unet, pretrained=None)
    torch.manual_seed(0)
    model: ALTER = MODELS.build(model_cfg).to(device)
    hypernet, keep = model.hypernet, 1 - args.sparsity
    low, high = -20.0, 20.0  # the gate offset whose mask table keeps ``keep``
    for _ in range(30):
        hypernet.gate_offset = (low + high) / 2
        model.refresh_table()
        if model.keep_ratios()[model.mac_convention] < keep:
            low = hypernet.gate_offset
        else:
            high = hypernet.gate_offset
    generator = torch.Generator().manual_seed(0)
    unet = model.unet
    channels, dim = backbone_of(unet).latent_channels(unet), backbone_of(unet).context_dim(unet)
    latent = model.resolution // model.latent_scale
    data = dict(latents=torch.randn(batch, channels, latent, latent, generator=generator),
                context=torch.randn(batch, model.context_length, dim, generator=generator))
    data = {k: v.to(device) for k, v in data.items()}
    optim = OptimWrapperDict(**{name: OptimWrapper(torch.optim.SGD(part.parameters(), lr=0.0))
                                for name, part in (('unet', model.unet),
                                                   ('hypernet', model.hypernet))})

    def iteration(hypernet_phase: bool, step: str):
        def run():
            model.unet_step = UNET_STEPS.build(dict(type=step))
            model.hypernet_iters = 1 << 30 if hypernet_phase else 0
            model.train_step(data, optim)
        return run

    fns = {f'{phase}-{step}': iteration(phase == 'with', step)
           for phase in ('with', 'without') for step in STEPS}
    times = interleaved(fns, args.repeats, device_sync(device))
    times['keep'] = model.keep_ratios()[model.mac_convention]
    return times


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f'UNet step (forward + backward, ALTER loss) on {device_name(device)}; medians of '
          f'{args.repeats} interleaved repeats, a new random batch each; sparsity '
          f'{args.sparsity} (random masks at the budget, equal timestep intervals)')
    print(f'{"model":8} {"latent":>7} {"batch":>5} {"N_E":>4} {"groups":>6} {"keep":>6} '
          + ' '.join(f'{f"{step} s":>10}' for step in STEPS) + ' '
          + ' '.join(f'{f"{step[:3]} x":>7}' for step in STEPS[1:]) + f' {"1/keep":>7}')
    batches = dict(zip(args.models, args.batch + [args.batch[-1]] * len(args.models)))
    shares = {}
    for name in args.models:
        config = BENCHMARKS[name]
        cfg = load_config(config).model
        latent = args.latent or (16 if name == 'sd21' else cfg.resolution // cfg.latent_scale)
        torch.manual_seed(0)
        unet = MODELS.build(dict(cfg.unet, pretrained=None)).to(device).train()
        units = PRUNING_SPACES.build(dict(type='paper')).find(unet)
        costs = mac_table(unet, units, 'paper', latent * cfg.latent_scale, cfg.latent_scale,
                          cfg.context_length)
        for num_experts in args.experts:
            t = unet_step_times(unet, costs, num_experts, batches[name], latent,
                                cfg.context_length, args, device)
            # Speedups: the blended step's time over each other step's; times to 4 significant
            # digits, so that the speedups can be recomputed from them.
            print(f'{name:8} {f"{latent}x{latent}":>7} {batches[name]:5d} {num_experts:4d} '
                  f'{t["groups"]:6.1f} {t["keep"]:6.3f} '
                  + ' '.join(f'{t[step]:10.4g}' for step in STEPS) + ' '
                  + ' '.join(f'{t["blended"] / t[step]:6.2f}x' for step in STEPS[1:])
                  + f' {1 / t["keep"]:6.2f}x', flush=True)
        del unet
        if cfg.get('type') == 'ALTER' and not args.no_share:
            shares[name] = hypernetwork_share(config, batches[name], args, device)
    for name, t in shares.items():
        print(f'ALTER iteration of {name} (config experts, batch {batches[name]}, mask table '
              f'keep {t["keep"]:.3f}):')
        for step in STEPS:
            hyper = t[f'with-{step}'] - t[f'without-{step}']
            print(f'  UNet step {step:8}: with the hypernetwork update {t[f"with-{step}"]:.3f} s, '
                  f'without {t[f"without-{step}"]:.3f} s; the hypernetwork update is '
                  f'{100 * hyper / t[f"with-{step}"]:.0f} % of an iteration before T_end')


if __name__ == '__main__':
    run_tool(main)
