"""The embedded benchmark end to end: train ALTER from the shipped teacher, then
compare it on the same prompts and seeds with the dense teacher (and with a longer
trained ALTER checkpoint, ``--shipped``).

    python tools/demo.py [--backbone unet|dit] [--work-dir work_dirs/demo] [--seed 0]
        [--num-prompts 300] [--num-reference 2000] [--threads 1] [--shipped CHECKPOINT]

``--backbone`` picks the benchmark's denoiser: ``unet`` (default; the mini LDM's
UNet, ``configs/alter/shapes_e4_s35.py``) or ``dit`` (the tiny PixArt-style
transformer, ``configs/alter/shapes_dit_e4_s35.py``); ``--config`` runs another
ALTER config of that backbone (an ablation). The dense teacher the config starts
from must exist: if it does not, the demo stops and prints the commands that
train and export it.

Methods: dense-50, dense-20, dense-13 (the dense step count with ALTER-20's MACs),
``ALTER-20 (this run)`` -- the demo's own short training run (400 iterations) -- and
``ALTER-20 (shipped)`` -- for the UNet ``checkpoints/shapes_alter_e4_s35``, ALTER trained to the study's
length (2,000 iterations, ``tools/study.py``'s seed-0 run; ``--shipped`` picks another
checkpoint, ``--shipped ''`` none). Prints a table (keep ratio, MACs per generation, measured speedups,
proxy FID/KID, attribute accuracy, alignment, SSIM to dense-50, each with its bootstrap
95 % interval over prompts) and writes ``results.json`` and ``grid.png`` (prompts x
methods) into the work dir. The quality metrics are the benchmark's proxies
(EfficientNet-Lite0 features, a trained attribute classifier, a LiT-style
MiniLM/EfficientNet scorer), not Inception FID or CLIP. Everything runs on ``--threads``
threads (default 1), so the numbers do not depend on the machine's core count.
"""
import argparse
import copy
import platform
import time
import uuid
from pathlib import Path
from typing import List

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from alter.engine.checkpoint import trust_local_checkpoints
from alter.evaluation.benchmark import (BenchmarkEvaluator, benchmark_prompts, default_metrics,
                                       grid_figure)
from alter.evaluation.image_store import from_uint8, to_uint8
from alter.inference.experts import load_experts, load_unet, save_checkpoint
from alter.inference.pipeline import TextToImage, generation_gmacs
from alter.inference.routing import ExpertRouter
from alter.utils.cli import InputError, run_tool
from alter.utils.io import atomic_write_json
from alter.utils.timing import interleaved

# The benchmark's backbones: the ALTER config the demo trains, the config of the dense
# teacher it starts from (whose header holds the commands that make the teacher) and the
# shipped ALTER checkpoint trained to the study's length ('' while there is none).
BACKBONES = {
    'unet': ('configs/alter/shapes_e4_s35.py', 'configs/teacher/shapes_dense.py',
             'checkpoints/shapes_alter_e4_s35'),
    'dit': ('configs/alter/shapes_dit_e4_s35.py', 'configs/teacher/shapes_dit_dense.py', ''),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backbone', choices=sorted(BACKBONES), default='unet',
                        help='the denoiser: the UNet or the tiny PixArt-style DiT')
    parser.add_argument('--config', help="an ALTER config of the backbone (default: the "
                        "backbone's, e.g. configs/alter/shapes_e4_s35.py)")
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--seed', type=int, default=0, help='training and sampling seed')
    parser.add_argument('--num-prompts', type=int, default=300)
    parser.add_argument('--num-reference', type=int, default=2000,
                        help='real val renders the proxy FID/KID compare with')
    parser.add_argument('--steps', type=int, nargs=2, default=(50, 20), metavar=('DENSE', 'FEW'))
    parser.add_argument('--shipped', help="a trained ALTER checkpoint to compare with (default: "
                        "the backbone's, checkpoints/shapes_alter_e4_s35 for the UNet -- the "
                        "study's 2,000-iteration seed-0 run; '' for none)")
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads for training, sampling and timing')
    parser.add_argument('--guidance', type=float, default=3.0)
    parser.add_argument('--scheduler', default='ddim')
    parser.add_argument('--timing-repeats', type=int, default=3)
    parser.add_argument('--timing-batch', type=int, default=16)
    parser.add_argument('--reuse', action='store_true',
                        help='reuse the ALTER checkpoint of an earlier run in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='training overrides, e.g. train_cfg.max_iters=1200')
    args = parser.parse_args(argv)
    args.config = args.config or BACKBONES[args.backbone][0]
    if args.shipped is None:
        args.shipped = BACKBONES[args.backbone][2]
    return args


def teacher_commands(teacher_config: str, checkpoint: str) -> List[str]:
    """The commands that train the dense teacher of ``teacher_config`` and export its last
    checkpoint to ``checkpoint``, as the teacher config's header writes them."""
    work_dir = f'work_dirs/{Path(checkpoint).name}'
    last = Config.fromfile(teacher_config).train_cfg.max_iters
    return [f'python tools/train.py {teacher_config} --work-dir {work_dir}',
            f'python tools/export.py {work_dir}/iter_{last}.pth --half --out {checkpoint}']


def check_teacher(cfg: Config, args: argparse.Namespace) -> None:
    """Stop, naming the folder and the commands that make it, if the dense teacher the
    config starts from (``model.pretrained``) is missing."""
    folder = cfg.model.get('pretrained')
    if folder is None or Path(folder).is_dir():
        return
    teacher_config = BACKBONES[args.backbone][1]
    commands = '\n'.join(f'  {c}' for c in teacher_commands(teacher_config, folder))
    raise InputError(f'the dense teacher {folder}/ (model.pretrained of {args.config}) does not '
                     f'exist. Train and export it first (the header of {teacher_config} gives '
                     f'these commands and the latent cache they train on):\n{commands}')


def train_alter(cfg: Config, args, work_dir: Path):
    """Train ALTER with mmengine's Runner; returns the trained model."""
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = str(work_dir / 'train')
    cfg.experiment_name = f'demo_{uuid.uuid4().hex[:8]}'
    cfg.randomness = dict(seed=args.seed)
    cfg.model.seed = args.seed
    trust_local_checkpoints()
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner.model


def time_generations(methods: dict, captions, seeds, args) -> dict:
    """Median seconds per generation of each method, repeats interleaved."""
    def run(generate, steps):
        return lambda: generate(captions, seeds, steps, args.guidance, args.scheduler,
                                batch_size=len(captions), progress=False)

    # No extra warm-up: every method has just sampled the whole prompt set.
    seconds = interleaved({name: run(*method) for name, method in methods.items()},
                          args.timing_repeats, warmup=0)
    return {name: value / len(captions) for name, value in seconds.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    check_teacher(cfg, args)
    torch.set_num_threads(args.threads)
    work_dir = Path(args.work_dir)
    started = time.perf_counter()
    stage_seconds = {}

    checkpoint = work_dir / 'alter_checkpoint'
    if args.reuse and (checkpoint / 'experts.json').exists():
        model = Runner.from_cfg(dict(cfg, work_dir=str(work_dir / 'train'),
                                     experiment_name=f'reuse_{uuid.uuid4().hex[:8]}')).model
    else:
        model = train_alter(cfg, args, work_dir)
        save_checkpoint(checkpoint, model.unet, model.export_experts())
    stage_seconds['train'] = time.perf_counter() - started
    model.eval()

    # The deployable artifacts, loaded back as a user would: one UNet + expert file each.
    dense = TextToImage.from_model(model, unet=model.teacher)
    dense_steps, few_steps = args.steps
    equal_macs = round(few_steps * load_experts(checkpoint).keep_ratios(model.costs)['fvcore'])
    methods = {f'dense-{dense_steps}': (dense, dense_steps, None),
               f'dense-{few_steps}': (dense, few_steps, None),
               f'dense-{equal_macs}': (dense, equal_macs, None)}
    alters = {f'ALTER-{few_steps} (this run)': checkpoint}
    if args.shipped:
        alters[f'ALTER-{few_steps} (shipped)'] = Path(args.shipped)
    for name, path in alters.items():
        experts, student = load_experts(path), load_unet(path).eval()
        methods[name] = (TextToImage.from_model(model, unet=student,
                                                router=ExpertRouter(student, experts)),
                         few_steps, experts)

    samples, captions, seeds = benchmark_prompts(args.num_prompts, args.seed)

    t0 = time.perf_counter()
    images = {name: from_uint8(to_uint8(generate(captions, seeds, steps, args.guidance,
                                                 args.scheduler)))  # scored as saved: 8-bit
              for name, (generate, steps, _) in methods.items()}
    stage_seconds['sample'] = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_generation = time_generations({n: m[:2] for n, m in methods.items()},
                                      captions[:args.timing_batch], seeds[:args.timing_batch],
                                      args)
    stage_seconds['timing'] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reference = f'dense-{dense_steps}'
    evaluator = BenchmarkEvaluator(default_metrics(len(samples), args.num_reference) + [
        dict(type='PairedFidelity', reference_key='dense_image', name=reference)])
    quality = {name: evaluator(imgs, samples, {'dense_image': images[reference]})
               for name, imgs in images.items()}
    stage_seconds['evaluate'] = time.perf_counter() - t0

    rows = []
    noise_config = model.scheduler.config
    for name, (_, steps, experts) in methods.items():
        rows.append(dict(
            method=name, steps=steps,
            keep_ratio=experts.keep_ratios(model.costs)['fvcore'] if experts else 1.0,
            **generation_gmacs(model.costs, steps, args.scheduler, noise_config, experts),
            seconds_per_generation=per_generation[name],
            **quality[name]))
    # Named by the step counts compared (dense_50 and dense_20 with the default --steps).
    ratios = [(f'macs_vs_dense_{dense_steps}', '{:.3f}'),
              (f'speedup_vs_dense_{dense_steps}', '{:.2f}x'),
              (f'speedup_vs_dense_{few_steps}', '{:.2f}x')]
    for row in rows:
        row[ratios[0][0]] = row['gmacs_per_generation'] / rows[0]['gmacs_per_generation']
        row[ratios[1][0]] = per_generation[reference] / row['seconds_per_generation']
        row[ratios[2][0]] = per_generation[f'dense-{few_steps}'] / row['seconds_per_generation']

    stage_seconds['total'] = time.perf_counter() - started
    results = dict(
        rows=rows, stage_seconds=stage_seconds,
        settings=dict(backbone=args.backbone, config=args.config, seed=args.seed,
                      num_prompts=len(samples), num_reference=args.num_reference,
                      prompt_split='val', scheduler=args.scheduler, guidance=args.guidance,
                      cfg_options=args.cfg_options, shipped=args.shipped,
                      timing_batch=args.timing_batch, timing_repeats=args.timing_repeats,
                      threads=torch.get_num_threads(),
                      machine=platform.processor() or platform.machine(),
                      metrics_note='proxy metrics of the embedded benchmark: FID/KID on '
                                   'EfficientNet-Lite0 features, attribute accuracy of a '
                                   'trained classifier, LiT-style MiniLM/EfficientNet alignment; '
                                   '*_ci_low/*_ci_high: bootstrap 95 % intervals over prompts'),
        experts={name: dict(keep_ratio=methods[name][2].keep_ratios(model.costs),
                            num_experts=methods[name][2].num_experts,
                            routing_table=list(methods[name][2].route)) for name in alters})
    atomic_write_json(work_dir / 'results.json', results)
    grid_figure(torch.stack([s['image'] for s in samples[:8]]),
                {n: imgs[:8] for n, imgs in images.items()}, captions[:8], work_dir / 'grid.png')
    print_table(rows, ratios)
    print(f"stages (s): {', '.join(f'{k} {v:.0f}' for k, v in stage_seconds.items())}")
    print(f'wrote {work_dir / "results.json"} and {work_dir / "grid.png"}')


def print_table(rows, ratios) -> None:
    """The rows' headline columns; ``ratios``: (key, format) of the MAC and speed ratios."""
    columns = [('method', '{}'), ('keep_ratio', '{:.3f}'), ('gmacs_per_generation', '{:.2f}'),
               ratios[0], ('seconds_per_generation', '{:.3f}'), *ratios[1:]]
    table = [[fmt.format(row[key]) for key, fmt in columns] for row in rows]
    # Headline metrics with their intervals; per-attribute accuracies are in results.json.
    quality = [k for k in rows[0] if k.startswith(('fid_', 'alignment_', 'paired_'))
               and k.endswith(('_efficientnet_lite0', '_effnet', '/ssim'))] + ['attribute_accuracy']
    for key in quality:
        columns.append((key, ''))
        for row, cells in zip(rows, table):
            cells.append(f'{row[key]:.3g} [{row[f"{key}_ci_low"]:.3g}, {row[f"{key}_ci_high"]:.3g}]'
                         if f'{key}_ci_low' in row else f'{row[key]:.3g}')
    widths = [max(len(key), *(len(r[i]) for r in table)) for i, (key, _) in enumerate(columns)]
    print('  '.join(key.ljust(w) for (key, _), w in zip(columns, widths)))
    for r in table:
        print('  '.join(v.ljust(w) for v, w in zip(r, widths)))
    print('(MACs per generation: fvcore convention, classifier-free guidance = 2 UNet calls '
          'per step; quality columns are the benchmark\'s proxies, [bootstrap 95 % interval '
          'over prompts]; paired_<reference>/ssim compares each image with the first row\'s '
          'from the same prompt and noise)')


if __name__ == '__main__':
    run_tool(main)
