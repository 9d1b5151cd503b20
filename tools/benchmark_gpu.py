"""One-run GPU benchmark: SD2.1's UNet in float16 at 768 px, routed experts against dense.

    python tools/benchmark_gpu.py                  # SD2.1 architecture, CUDA, under 8 minutes
    python tools/benchmark_gpu.py configs/alter/tiny_e4_s35.py --device cpu --steps 4 3 \\
        --repeats 1 --loop-repeats 1 --compile-backend eager --compile-experts 1   # a check

Random weights (nothing is downloaded); ``--experts`` synthetic experts, expert k
keeping the k costliest ``paper`` units and skipping the next ones until
``--sparsity`` of the fvcore MACs is removed (expert 0 is tools/benchmark_speed.py's
expert), on equal timestep intervals. All timings are interleaved repeats with
a warm-up, medians, the device synchronised around each (``alter.utils.timing``):

* per UNet call (the guidance batch, as the pipeline calls it): the dense UNet
  against each expert, beside the expert's MAC ratio;
* routing: the host lookup per step, and the timestep read per call that routing
  inside a pipeline adds (``alter.inference.speed``);
* end to end: dense-N1 against ALTER-N2 generations through diffusers'
  ``StableDiffusionPipeline``, ALTER routed by ``apply_experts``. Only the UNet is
  timed: prompts are random embeddings (no text encoder runs) and the latents are
  returned (``output_type='latent'``), so the tiny random VAE, which only fixes
  the latent scale, never runs;
* peak memory of one generation each (``torch.cuda.max_memory_allocated``; CUDA only);
* per expert and dense, eager against ``torch.compile(fullgraph=True)`` (experts
  compiled through the routed UNet, one graph each), compile time apart.

``--budget`` seconds bound the run, model building included: repeats shrink to
fit each section's share of the time left, and a graph whose compile would not
fit is left out (the report names what was left out and why; a compile that
fails is reported the same way). Writes ``benchmark_gpu.json`` and
``benchmark_gpu.md`` into ``--out-dir``, atomically, once before compiling
(``complete: false``) and once at the end.
"""
import argparse
import copy
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm

from alter.inference.routing import ExpertRouter, timestep_routing
from alter.inference.sampler import SCHEDULERS, build_sampling_scheduler
from alter.inference.sd_pipeline import apply_experts
from alter.inference.speed import lookup_seconds, synthetic_experts, timestep_read
from alter.registry import MODELS, PRUNING_SPACES
from alter.units.macs import MacTable, mac_table
from alter.utils.cli import InputError, open_fraction, positive_int, run_tool
from alter.utils.config import load_config
from alter.utils.io import atomic_write_json, atomic_write_text
from alter.utils.timing import device_name, device_sync, interleaved

GUIDANCE = 7.5
SECTIONS = ('per step', 'routing', 'end to end', 'memory', 'compile')


def compile_backend(name: str) -> str:
    """argparse type: a registered ``torch.compile`` backend."""
    backends = torch._dynamo.list_backends(exclude_tags=())
    if name not in backends:
        raise argparse.ArgumentTypeError(f'{name!r} is not a registered torch.compile backend; '
                                         f'registered: {", ".join(backends)}')
    return name


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default='configs/_base_/models/sd21_unet.py',
                        help='config with model.unet (a UNet2DConditionModel architecture)')
    parser.add_argument('--resolution', type=positive_int,
                        help="image side in pixels (default: the config's resolution)")
    parser.add_argument('--batch', type=positive_int, default=1, help='images per generation')
    parser.add_argument('--steps', type=positive_int, nargs=2, default=(50, 20),
                        metavar=('DENSE', 'ALTER'))
    parser.add_argument('--experts', type=positive_int, default=4, help='number of experts')
    parser.add_argument('--sparsity', type=open_fraction, default=0.35,
                        help='sparsity of every expert (fraction of the MACs removed)')
    parser.add_argument('--scheduler', choices=sorted(SCHEDULERS), default='ddim')
    parser.add_argument('--repeats', type=positive_int, default=20,
                        help='repeats of single UNet calls and routing loops (at most)')
    parser.add_argument('--loop-repeats', type=positive_int, default=3,
                        help='repeats of whole generations (at most)')
    parser.add_argument('--compile-backend', type=compile_backend, default='inductor',
                        help='torch.compile backend')
    parser.add_argument('--compile-experts', type=positive_int,
                        help='compile only the first N experts (default: all)')
    parser.add_argument('--no-compile', action='store_true', help='skip torch.compile')
    parser.add_argument('--compile-estimate', type=float, default=90.0,
                        help='seconds the first compile is assumed to take, for the budget')
    parser.add_argument('--budget', type=float, default=420.0,
                        help='seconds the whole run may take (model building included)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out-dir', default='work_dirs/benchmark_gpu',
                        help='folder for benchmark_gpu.json and benchmark_gpu.md')
    return parser.parse_args(argv)


class Budget:
    """The run's time budget: seconds left, and how many repeats fit in a share of them."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def repeats(self, wanted: int, seconds_per_repeat: float, share: float) -> int:
        """At most ``wanted`` repeats, one warm-up included in the cost, within ``share`` of
        the time left; at least 1."""
        fit = int(share * self.left() / max(seconds_per_repeat, 1e-9)) - 1
        return max(1, min(wanted, fit))


def build_unet(config: str) -> tuple:
    """The config's UNet with random weights, in float32 on the host, and its model config."""
    model_cfg = load_config(config).model
    torch.manual_seed(0)
    unet = MODELS.build(dict(model_cfg.unet, load_weights=False)).eval()
    scale = model_cfg.get('latent_scale', 8)
    added = getattr(getattr(unet, 'config', None), 'addition_embed_type', None)
    if not isinstance(unet, UNet2DConditionModel) or added:
        found = type(unet).__name__ + (f' with added conditioning ({added!r})' if added else '')
        raise InputError(f'{config}: model.unet builds a {found}; this benchmark runs '
                         'StableDiffusionPipeline, which needs a plain UNet2DConditionModel '
                         '(SD 1.x/2.x). Time other denoisers with tools/benchmark_speed.py')
    if scale & (scale - 1):
        raise InputError(f'{config}: latent_scale is {scale}; a StableDiffusionPipeline\'s VAE '
                         'scales by a power of two')
    return unet, model_cfg


def make_pipeline(unet: UNet2DConditionModel, latent_scale: int,
                  scheduler) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` around ``unet``: no text encoder (prompts are given as
    embeddings) and a tiny random VAE that only sets the latent scale (latents are returned)."""
    levels = latent_scale.bit_length()  # 2 ** (levels - 1) = latent_scale
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=unet.config.in_channels,
                        block_out_channels=(4, ) * levels, layers_per_block=1, norm_num_groups=4,
                        down_block_types=('DownEncoderBlock2D', ) * levels,
                        up_block_types=('UpDecoderBlock2D', ) * levels)
    # On the UNet's device, as the pipeline runs where its parts are; it never runs, so it
    # stays in float32.
    pipe = StableDiffusionPipeline(vae=vae.to(unet.device), text_encoder=None, tokenizer=None,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def expert_timesteps(route: tuple) -> List[int]:
    """A timestep in the middle of each expert's interval of the routing table."""
    rows: Dict[int, List[int]] = {}
    for t, expert in enumerate(route):
        rows.setdefault(expert, []).append(t)
    return [rows[e][len(rows[e]) // 2] for e in sorted(rows)]


def peak_memory(generate: Callable[[], object], device: torch.device) -> Optional[dict]:
    """Bytes allocated before one generation, at its peak, and the difference (CUDA only)."""
    if device.type != 'cuda':
        generate()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    generate()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return dict(before_bytes=before, peak_bytes=peak, working_bytes=peak - before)


def compile_section(graphs: Dict[str, tuple], wanted_repeats: int, step: float,
                    budget: Budget, first_estimate: float, sync, log) -> dict:
    """Compile each graph (name -> (eager call, compiled call, cost in dense steps)) in order
    while the budget allows; then the compiled ones interleaved with their eager calls."""
    compiled, skipped, first_calls, failed = {}, {}, {}, None
    for name, (eager, call, cost) in graphs.items():
        estimate = max(first_calls.values(), default=first_estimate)
        # Left for the timing after the compiles: a warm-up and one repeat of every call.
        reserve = 4 * step * (cost + sum(c for _, _, c in compiled.values()))
        if failed:  # the same failure would likely repeat, each time after a long trace
            skipped[name] = f'not tried: compiling {failed} failed'
            continue
        if budget.left() < estimate + reserve:
            skipped[name] = (f'time budget: {budget.left():.0f} s left, compiling estimated at '
                             f'{estimate:.0f} s')
            continue
        log(f'compiling {name} (estimate {estimate:.0f} s, {budget.left():.0f} s left)')
        sync()
        start = time.perf_counter()
        try:
            call()  # traces and compiles the graph
        except Exception as error:  # reported with the measurements made so far
            first_line = next(iter(str(error).splitlines()), '')
            skipped[name] = f'compile failed: {type(error).__name__}: {first_line}'
            log(skipped[name])
            failed = name
            continue
        sync()
        first_calls[name] = time.perf_counter() - start
        compiled[name] = (eager, call, cost)
    timed = {}
    for name, (eager, call, _) in compiled.items():
        timed[f'{name} eager'], timed[f'{name} compiled'] = eager, call
    per_repeat = 2 * step * sum(cost for _, _, cost in compiled.values())
    repeats = budget.repeats(wanted_repeats, per_repeat, 0.9) if compiled else 0
    times = interleaved(timed, repeats, sync) if compiled else {}
    rows = {}
    for name in compiled:
        eager, fast = times[f'{name} eager'], times[f'{name} compiled']
        rows[name] = dict(first_call_seconds=first_calls[name],
                          compile_seconds=max(first_calls[name] - fast, 0.0),
                          eager_seconds=eager, compiled_seconds=fast,
                          compile_speedup=eager / fast)
    return dict(graphs=rows, skipped=skipped, repeats=repeats)


def run(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    """All measurements; returns the report, handed to ``save`` also before compiling."""
    budget = Budget(args.budget)
    unet, model_cfg = build_unet(args.config)
    bar = tqdm(total=1 + len(SECTIONS), desc='build', unit='section')

    def log(text: str) -> None:
        bar.write(f'[{budget.elapsed():6.1f} s] {text}')

    def section(name: str) -> None:
        bar.update()
        bar.set_description(name)

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    sync = device_sync(device)
    scale = model_cfg.get('latent_scale', 8)
    resolution = args.resolution or model_cfg.resolution
    if resolution % scale:
        raise InputError(f'--resolution {resolution} is not a multiple of the autoencoder scale '
                         f'factor {scale} of {args.config}; pass a multiple of {scale}')
    latent, context_length = resolution // scale, model_cfg.get('context_length', 77)
    units = PRUNING_SPACES.build(dict(type='paper')).find(unet)
    costs: MacTable = mac_table(unet, units, 'paper', resolution, scale, context_length)
    experts = synthetic_experts(unet, 'paper', costs, args.sparsity, args.experts)
    keeps = costs.keep_ratio(torch.tensor(experts.masks, dtype=torch.float64)).tolist()
    unet = unet.to(device, dtype)
    dense_unet = copy.deepcopy(unet)  # never routed: the dense UNet as diffusers runs it

    batch = 2 * args.batch  # classifier-free guidance
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, unet.config.in_channels, latent, latent, generator=generator)
    context = torch.randn(batch, context_length, unet.config.cross_attention_dim,
                          generator=generator)
    x, context = x.to(device, dtype), context.to(device, dtype)

    def unet_call(model, timestep: torch.Tensor) -> Callable[[], None]:
        """One call on the guidance batch, as StableDiffusionPipeline makes it."""
        return lambda: model(x, timestep, encoder_hidden_states=context, return_dict=False)

    t_mid = torch.tensor(500, device=device)
    dense_call = unet_call(dense_unet, t_mid)
    dense_call()  # first call: lazy initialisation
    sync()
    start = time.perf_counter()
    dense_call()
    sync()
    step = time.perf_counter() - start  # a first estimate for the budget
    report = dict(
        device=device_name(device), torch=torch.__version__, diffusers=diffusers.__version__,
        cuda=torch.version.cuda if device.type == 'cuda' else None,
        python=platform.python_version(), dtype=str(dtype), config=args.config,
        weights='random', resolution=resolution, latent=latent, batch=args.batch,
        guidance_batch=batch, guidance_scale=GUIDANCE, scheduler=args.scheduler,
        attention=type(next(iter(unet.attn_processors.values()))).__name__,
        parameters=sum(p.numel() for p in unet.parameters()),
        gmacs_per_call=costs.total_macs * batch / 1e9, mac_convention=costs.convention,
        sparsity=args.sparsity, num_experts=args.experts,
        timed='UNet only: random prompt embeddings (no text encoder), latents returned '
              '(the tiny random VAE never runs)', budget_seconds=args.budget)
    log(f"built {type(unet).__name__} ({report['parameters'] / 1e6:.1f} M parameters, random "
        f"weights), {report['gmacs_per_call']:.4g} GMACs per call; a dense call takes "
        f'~{step * 1e3:.1f} ms')

    # -- per step: dense against each expert, eager, routed by host lookups -----------------
    section('per step')
    router = ExpertRouter(unet, experts)

    def expert_call(e: int) -> Callable[[], None]:
        call = unet_call(unet, t_mid)
        return lambda: (router.use(e), call())

    calls = {'dense': dense_call, **{f'expert {e}': expert_call(e) for e in range(args.experts)}}
    repeats = budget.repeats(args.repeats, step * (1 + sum(keeps)), 0.1)
    times = interleaved(calls, repeats, sync)
    step = times['dense']
    per_step = dict(repeats=repeats, dense_seconds=step, experts=[
        dict(keep_ratio=keeps[e], mac_ratio=1 / keeps[e], seconds=times[f'expert {e}'],
             skipped_units=[u for u, keep in zip(experts.unit_names, experts.masks[e])
                            if not keep],
             speedup=step / times[f'expert {e}'],
             speedup_vs_ideal=keeps[e] * step / times[f'expert {e}'])
        for e in range(args.experts)])
    for e, row in enumerate(per_step['experts']):
        log(f'expert {e} (keep {row["keep_ratio"]:.3f}): {row["seconds"] * 1e3:.1f} ms vs dense '
            f'{step * 1e3:.1f} ms, speedup {row["speedup"]:.3f}x, MAC ratio '
            f'{row["mac_ratio"]:.3f}x ({100 * row["speedup_vs_ideal"]:.1f} % of ideal)')

    # -- routing: host lookup, and the timestep read of routing inside a pipeline ---------------
    section('routing')
    noise_config = dict(model_cfg.noise_scheduler)
    dense_steps, alter_steps = args.steps
    schedule = build_sampling_scheduler(args.scheduler, noise_config)
    schedule.set_timesteps(alter_steps, device=device)
    lookup = lookup_seconds(router)
    expert_step = statistics.mean(row['seconds'] for row in per_step['experts'])
    repeats = budget.repeats(args.repeats, 2 * alter_steps * expert_step, 0.1)
    read = timestep_read(lambda t: unet_call(unet, t)(), router, schedule.timesteps, repeats,
                         sync)
    router.remove()
    routing = dict(repeats=repeats, lookup_seconds=lookup,
                   lookup_fraction_of_step=lookup / expert_step,
                   timestep_read_seconds=read['per_call'],
                   timestep_read_fraction_of_step=read['per_call'] / expert_step,
                   timestep_read_isolated_seconds=read['isolated'],
                   timestep_read_loops=read['loops'])
    log(f'routing lookup {lookup * 1e6:.2f} us, timestep read {read["per_call"] * 1e6:.1f} us '
        f'per call ({100 * routing["timestep_read_fraction_of_step"]:.3f} % of an expert step)')

    # -- end to end: StableDiffusionPipeline, dense against apply_experts ----------------------
    section('end to end')
    pipes = {name: make_pipeline(model, scale,
                                 build_sampling_scheduler(args.scheduler, noise_config))
             for name, model in (('dense', dense_unet), ('alter', unet))}
    apply_experts(pipes['alter'], experts)
    prompt = context[:args.batch], context[args.batch:]

    def generation(name: str, steps: int) -> Callable[[], object]:
        return lambda: pipes[name](
            prompt_embeds=prompt[0], negative_prompt_embeds=prompt[1], height=resolution,
            width=resolution, num_inference_steps=steps, guidance_scale=GUIDANCE,
            output_type='latent', generator=torch.Generator().manual_seed(1)).images

    schedule.set_timesteps(alter_steps)
    alter_macs = sum(keeps[experts.expert_at(t)] for t in schedule.timesteps.tolist())
    schedule.set_timesteps(dense_steps)
    dense_macs = len(schedule.timesteps)
    generations = {f'dense-{dense_steps}': generation('dense', dense_steps),
                   f'ALTER-{alter_steps}': generation('alter', alter_steps)}
    repeats = budget.repeats(args.loop_repeats, step * (dense_macs + alter_macs), 0.25)
    loops = interleaved(generations, repeats, sync)
    dense_s, alter_s = loops[f'dense-{dense_steps}'], loops[f'ALTER-{alter_steps}']
    end_to_end = dict(path='diffusers StableDiffusionPipeline, ALTER routed by apply_experts',
                      repeats=repeats, dense_steps=dense_steps, alter_steps=alter_steps,
                      dense_seconds=dense_s, alter_seconds=alter_s, speedup=dense_s / alter_s,
                      mac_ratio=dense_macs / alter_macs)
    log(f'dense-{dense_steps} {dense_s:.3f} s, ALTER-{alter_steps} {alter_s:.3f} s: speedup '
        f'{end_to_end["speedup"]:.2f}x, MAC ratio {end_to_end["mac_ratio"]:.2f}x')

    # -- memory of one generation each; which experts the routed pipeline ran -------------------
    section('memory')
    used: List[int] = []
    routed_router = timestep_routing(unet).router
    hook = unet.register_forward_hook(lambda *_: used.append(routed_router.current))
    memory = {name: peak_memory(generations[key], device)
              for name, key in (('dense', f'dense-{dense_steps}'),
                                ('alter', f'ALTER-{alter_steps}'))}
    hook.remove()
    end_to_end['alter_calls_per_expert'] = [used.count(e) for e in range(args.experts)]
    memory = memory if device.type == 'cuda' else None
    if memory:
        log(f'peak memory of a generation: dense {memory["dense"]["peak_bytes"] / 2**30:.2f} GiB, '
            f'ALTER {memory["alter"]["peak_bytes"] / 2**30:.2f} GiB')
    report.update(per_step=per_step, routing=routing, end_to_end=end_to_end, memory=memory,
                  compile=None, complete=False, elapsed_seconds=budget.elapsed())
    save(report)  # kept if compiling fails hard or the run is stopped

    # -- eager against torch.compile, per expert -------------------------------------------
    section('compile')
    compiled = None
    if not args.no_compile:
        fast_dense = torch.compile(dense_unet, backend=args.compile_backend, fullgraph=True)
        fast_routed = torch.compile(unet, backend=args.compile_backend, fullgraph=True)
        t_of = [torch.tensor(t, device=device) for t in expert_timesteps(experts.route)]
        count = min(args.compile_experts or args.experts, args.experts)
        # Expert 0 first: if only one graph fits the budget, it is an expert's.
        graphs = {'expert 0': (unet_call(unet, t_of[0]), unet_call(fast_routed, t_of[0]),
                               keeps[0]),
                  'dense': (dense_call, unet_call(fast_dense, t_mid), 1.0)}
        for e in range(1, count):
            graphs[f'expert {e}'] = (unet_call(unet, t_of[e]), unet_call(fast_routed, t_of[e]),
                                     keeps[e])
        compiled = compile_section(graphs, args.repeats, step, budget, args.compile_estimate,
                                   sync, log)
        compiled.update(backend=args.compile_backend, fullgraph=True)
        compiled['skipped'].update({f'expert {e}': '--compile-experts'
                                    for e in range(count, args.experts)})
        dense_fast = compiled['graphs'].get('dense', {}).get('compiled_seconds')
        for name, row in compiled['graphs'].items():
            row['keep_ratio'] = 1.0 if name == 'dense' else keeps[int(name.split()[1])]
            if dense_fast:
                row['speedup_vs_dense_compiled'] = dense_fast / row['compiled_seconds']
            log(f'{name}: eager {row["eager_seconds"] * 1e3:.1f} ms, compiled '
                f'{row["compiled_seconds"] * 1e3:.1f} ms ({row["compile_speedup"]:.2f}x), '
                f'compile {row["compile_seconds"]:.1f} s')
        if compiled['skipped']:
            log(f'not compiled: {compiled["skipped"]}')
    bar.update()
    bar.close()
    report.update(compile=compiled, complete=True, elapsed_seconds=budget.elapsed())
    return report


def _ms(seconds: float) -> str:
    return f'{seconds * 1e3:.1f} ms'


def markdown(report: dict) -> str:
    """The report as markdown: a header line, the main table, routing and compile tables."""
    e2e, per_step = report['end_to_end'], report['per_step']
    lines = [
        f"# GPU benchmark: {report['device']}",
        '',
        f"{report['config']} with {report['weights']} weights ({report['parameters'] / 1e6:.1f} M "
        f"parameters), {report['dtype']}, {report['resolution']} px ({report['latent']}×"
        f"{report['latent']} latent), batch {report['batch']} (×2 for guidance "
        f"{report['guidance_scale']}), {report['scheduler']}, attention "
        f"{report['attention']}; torch {report['torch']}, diffusers {report['diffusers']}"
        f"{', CUDA ' + report['cuda'] if report['cuda'] else ''}. {report['gmacs_per_call']:.4g} "
        f"GMACs per UNet call ({report['mac_convention']}); {report['num_experts']} synthetic "
        f"experts at sparsity {report['sparsity']}. Timed: {report['timed']}. Medians of "
        'interleaved repeats after a warm-up. Run took '
        f"{report['elapsed_seconds']:.0f} s (budget {report['budget_seconds']:.0f} s).",
        '',
        *([] if report['complete'] else [
            '**Incomplete: the measurements made before torch.compile; the run did not finish.**',
            '']),
        '| measurement | dense | ALTER | speedup | MAC ratio | % of ideal |',
        '|---|---|---|---|---|---|']
    for e, row in enumerate(per_step['experts']):
        lines.append(f"| UNet call, expert {e} (keep {row['keep_ratio']:.3f}), eager, "
                     f"{per_step['repeats']} repeats | {_ms(per_step['dense_seconds'])} | "
                     f"{_ms(row['seconds'])} | {row['speedup']:.3f}× | {row['mac_ratio']:.3f}× | "
                     f"{100 * row['speedup_vs_ideal']:.1f} |")
    lines.append(f"| end to end, {e2e['path']}, {e2e['repeats']} repeats | "
                 f"dense-{e2e['dense_steps']} {e2e['dense_seconds']:.3f} s | "
                 f"ALTER-{e2e['alter_steps']} {e2e['alter_seconds']:.3f} s | "
                 f"{e2e['speedup']:.2f}× | {e2e['mac_ratio']:.2f}× | "
                 f"{100 * e2e['speedup'] / e2e['mac_ratio']:.1f} |")
    memory = report['memory']
    if memory:
        lines.append('| peak memory of a generation (max_memory_allocated; working = peak − '
                     'allocated before) | ' + ' | '.join(
                         f"{memory[k]['peak_bytes'] / 2**30:.2f} GiB (working "
                         f"{memory[k]['working_bytes'] / 2**30:.2f} GiB)"
                         for k in ('dense', 'alter')) + ' | | | |')
    else:
        lines.append('| peak memory of a generation | not measured (CUDA only) | | | | |')
    routing = report['routing']
    lines += [
        '',
        f"ALTER-{e2e['alter_steps']} ran the experts {e2e['alter_calls_per_expert']} UNet calls "
        'each (counted in the routed pipeline). Routing: host lookup '
        f"{routing['lookup_seconds'] * 1e6:.2f} µs ({100 * routing['lookup_fraction_of_step']:.4f}"
        " % of an expert call); reading the received timestep (routing inside a pipeline) adds "
        f"{routing['timestep_read_seconds'] * 1e6:.1f} µs per call "
        f"({100 * routing['timestep_read_fraction_of_step']:.3f} % of an expert call; the read "
        f"alone {routing['timestep_read_isolated_seconds'] * 1e6:.1f} µs)."]
    compiled = report['compile']
    if compiled is None:
        lines += ['', 'torch.compile: not measured.']
        return '\n'.join(lines) + '\n'
    lines += [
        '',
        f"torch.compile (backend {compiled['backend']}, fullgraph), {compiled['repeats']} "
        'repeats; experts called through the routed UNet as a pipeline calls it (routed by the '
        'timestep it receives); compile time = first call − compiled call:',
        '',
        '| UNet | keep | eager | compiled | compiled vs eager | speedup vs dense, compiled '
        '| compile time |',
        '|---|---|---|---|---|---|---|']
    for name, row in compiled['graphs'].items():
        vs_dense = row.get('speedup_vs_dense_compiled')
        lines.append(f"| {name} | {row['keep_ratio']:.3f} | {_ms(row['eager_seconds'])} | "
                     f"{_ms(row['compiled_seconds'])} | {row['compile_speedup']:.2f}× | "
                     f"{f'{vs_dense:.3f}×' if vs_dense else '—'} | "
                     f"{row['compile_seconds']:.1f} s |")
    for name, reason in compiled['skipped'].items():
        lines.append(f'| {name} | not compiled ({reason}) | | | | | |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out_dir)

    def save(report: dict) -> None:
        atomic_write_json(out / 'benchmark_gpu.json', report)
        atomic_write_text(out / 'benchmark_gpu.md', markdown(report))

    with torch.no_grad():
        report = run(args, save)
    save(report)
    print(markdown(report))
    print(f'wrote {out / "benchmark_gpu.json"} and {out / "benchmark_gpu.md"}')
    return report


if __name__ == '__main__':
    run_tool(main)
