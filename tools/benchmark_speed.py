"""Measured speed of routed experts against the dense UNet, beside the MAC ratios.

The UNet is any supported denoiser (a diffusion transformer too), called through
its backbone adapter with its example conditioning.

    python tools/benchmark_speed.py configs/_base_/models/sd21_unet.py --latent 32
    python tools/benchmark_speed.py CONFIG --checkpoint DIR      # a trained ALTER checkpoint

Times, interleaved and as medians over repeats: one UNet call of the dense
model and of an expert (per-step speedup), the host-side routing lookup, the
cost of routing by the timestep each UNet call receives (``apply_experts``:
one host read, i.e. one device sync, per call; measured on N2 calls fed the
schedule's device timesteps, against the same calls routed from a host copy
of the schedule), and whole sampling loops of dense N1 steps against ALTER N2
steps (end-to-end speedup). Without ``--checkpoint`` the UNet has random weights and one
synthetic expert skips the costliest units until ``--sparsity`` of the whole
UNet's MACs is removed. Classifier-free guidance doubles the batch, as in
sampling. On CUDA it runs in float16. ``--clock cpu`` times the process's CPU seconds
(``alter.utils.timing``): on a CPU shared with other processes, their load stays out.
"""
import argparse

import torch

from alter.inference.experts import load_experts, load_unet
from alter.inference.routing import ExpertRouter
from alter.inference.sampler import build_sampling_scheduler, sample
from alter.inference.speed import lookup_seconds, synthetic_experts, timestep_read
from alter.models.conditioning import context_to, map_context
from alter.registry import MODELS, PRUNING_SPACES
from alter.units.backbones import backbone_of
from alter.units.macs import mac_table
from alter.utils.cli import InputError, open_fraction, positive_int, run_tool
from alter.utils.config import load_config
from alter.utils.io import atomic_write_json
from alter.utils.timing import CLOCKS, device_name, device_sync, interleaved


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config with model.unet (architecture)')
    parser.add_argument('--checkpoint', help='ALTER checkpoint directory (unet/ + experts.json)')
    parser.add_argument('--sparsity', type=open_fraction, default=0.35,
                        help='sparsity of the synthetic expert (without --checkpoint)')
    parser.add_argument('--latent', type=positive_int,
                        help='latent side (default: config resolution / '
                        'latent_scale)')
    parser.add_argument('--batch', type=positive_int, default=1, help='images per generation')
    parser.add_argument('--steps', type=positive_int, nargs=2, default=(50, 20),
                        metavar=('DENSE', 'ALTER'))
    parser.add_argument('--scheduler', default='ddim')
    parser.add_argument('--repeats', type=positive_int, default=5)
    parser.add_argument('--loop-repeats', type=positive_int, default=3,
                        help='repeats of whole loops')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out', help='write the measurements as JSON')
    parser.add_argument('--clock', choices=sorted(CLOCKS), default='wall',
                        help="'cpu': CPU seconds of this process, for CPUs shared with other "
                        'processes (alter.utils.timing)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    sync = device_sync(device)
    if args.clock == 'cpu' and device.type != 'cpu':
        raise InputError(f'--clock cpu times host work only; use --clock wall on {device}')
    model_cfg = load_config(args.config).model
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    if args.checkpoint:
        unet, experts = load_unet(args.checkpoint), load_experts(args.checkpoint)
    else:
        unet, experts = MODELS.build(dict(model_cfg.unet, load_weights=False)), None
    unet = unet.eval()
    backbone = backbone_of(unet, 'benchmark_speed')
    latent = args.latent or model_cfg.resolution // model_cfg.get('latent_scale', 8)
    scale = model_cfg.get('latent_scale', 8)
    context_length = model_cfg.get('context_length', 77)
    space = experts.space if experts else 'paper'
    units = PRUNING_SPACES.build(dict(type=space)).find(unet)
    costs = mac_table(unet, units, space, latent * scale, scale, context_length)
    experts = experts or synthetic_experts(unet, space, costs, args.sparsity)
    unet = unet.to(device, dtype) if dtype != torch.float32 else unet.to(device)
    router = ExpertRouter(unet, experts)

    batch = 2 * args.batch  # classifier-free guidance
    channels = backbone.latent_channels(unet)
    x = torch.randn(batch, channels, latent, latent, device=device, dtype=dtype)
    example = backbone.example_context(unet, context_length, torch.Generator().manual_seed(0))
    context = context_to(map_context(lambda c: c.repeat(batch, *[1] * (c.dim() - 1)), example),
                         device, dtype)
    t = torch.tensor(500, device=device)

    def call(timestep: torch.Tensor) -> None:
        """One call on the guidance batch at a (0-d) timestep, as a pipeline makes it."""
        backbone.predict(unet, x, timestep.expand(batch), context)
    expert = experts.expert_at(500)  # the expert of the timestep the per-step timing uses
    keep = costs.keep_ratio(torch.tensor(experts.masks[expert], dtype=torch.float64)).item()

    def dense_call():
        router.dense()
        call(t)

    def expert_call():
        router.select(500)
        call(t)

    clock = CLOCKS[args.clock]
    step = interleaved({'dense': dense_call, 'expert': expert_call}, args.repeats, sync,
                       clock=clock)
    lookup = lookup_seconds(router)

    noise_config = dict(model_cfg.noise_scheduler)
    dense_steps, alter_steps = args.steps
    schedule = build_sampling_scheduler(args.scheduler, noise_config)
    schedule.set_timesteps(alter_steps, device=device)
    read = timestep_read(call, router, schedule.timesteps, args.repeats, sync, clock)

    noise = torch.randn(args.batch, channels, latent, latent, device=device, dtype=dtype)
    cond = map_context(lambda c: c[:args.batch], context)
    uncond = map_context(lambda c: c[args.batch:], context)

    def loop(steps, routed):
        return lambda: sample(unet, build_sampling_scheduler(args.scheduler, noise_config), noise,
                              cond, uncond, steps, 7.5, router if routed else None)

    loops = interleaved({f'dense-{dense_steps}': loop(dense_steps, False),
                         f'ALTER-{alter_steps}': loop(alter_steps, True)}, args.loop_repeats, sync,
                        clock=clock)
    sched = build_sampling_scheduler(args.scheduler, noise_config)
    sched.set_timesteps(alter_steps)
    expert_keep = costs.keep_ratio(torch.tensor(experts.masks, dtype=torch.float64))
    alter_macs = sum(expert_keep[experts.expert_at(s)].item() for s in sched.timesteps.tolist())
    sched.set_timesteps(dense_steps)
    dense_macs = len(sched.timesteps)

    report = dict(
        device=device_name(device),
        dtype=str(dtype), clock=args.clock, latent=latent, batch=args.batch, guidance_batch=batch,
        architecture=model_cfg.unet.get('type'), checkpoint=args.checkpoint,
        gmacs_per_call=costs.total_macs * batch / 1e9, expert_keep_ratio=keep,
        step_seconds=step, step_speedup=step['dense'] / step['expert'], step_mac_ratio=1 / keep,
        lookup_seconds=lookup, lookup_fraction_of_step=lookup / step['expert'],
        timestep_read_seconds=read['per_call'], timestep_read_isolated_seconds=read['isolated'],
        timestep_read_fraction_of_step=read['per_call'] / step['expert'],
        timestep_read_loops=read['loops'],
        loop_seconds=loops,
        end_to_end_speedup=loops[f'dense-{dense_steps}'] / loops[f'ALTER-{alter_steps}'],
        end_to_end_mac_ratio=dense_macs / alter_macs)
    report['step_speedup_vs_ideal'] = report['step_speedup'] / report['step_mac_ratio']
    print(f"device: {report['device']}, {report['dtype']}, latent {latent}x{latent}, "
          f'batch {args.batch} (x2 for guidance), {costs.total_macs * batch / 1e9:.1f} GMACs/call')
    print(f'per step   dense {step["dense"] * 1e3:8.1f} ms   expert (keep {keep:.3f}) '
          f'{step["expert"] * 1e3:8.1f} ms   speedup {report["step_speedup"]:.3f}x   '
          f'MAC ratio {report["step_mac_ratio"]:.3f}x   ({100 * report["step_speedup_vs_ideal"]:.1f} '
          '% of ideal)')
    print(f'routing lookup {lookup * 1e6:.2f} us = {100 * report["lookup_fraction_of_step"]:.4f} % '
          'of an expert step')
    print(f"timestep read (routing by the received timestep) {read['per_call'] * 1e6:.1f} us "
          f"per UNet call = {100 * report['timestep_read_fraction_of_step']:.3f} % of an expert "
          f"step (loops of {alter_steps} calls: host {read['loops']['host'] * 1e3:.1f} ms, read "
          f"{read['loops']['read'] * 1e3:.1f} ms; the read alone {read['isolated'] * 1e6:.1f} us)")
    print(f"end to end dense-{dense_steps} {loops[f'dense-{dense_steps}']:.2f} s   "
          f"ALTER-{alter_steps} {loops[f'ALTER-{alter_steps}']:.2f} s   speedup "
          f"{report['end_to_end_speedup']:.2f}x   MAC ratio {report['end_to_end_mac_ratio']:.2f}x")
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == '__main__':
    run_tool(main)
