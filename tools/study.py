"""The ablation and sparsity study on the embedded benchmark, resumable.

    python tools/study.py [--work-dir work_dirs/study] [--out docs/study] [--num-prompts 200]
        [--only PATTERN...] [--train-options KEY=VALUE...] [--threads 1] [--list]

Trains (``tools/train.py``, then ``tools/export.py``) and evaluates every point:

* ablation: Static, Manual, TwoStage and ALTER at sparsity 0.35, 4 experts, seeds 0/1/2;
* sparsity sweep: ALTER at 0.45 and 0.55 (0.35 is the ablation's seed-0 run);
* expert sweep: ALTER with 2 and 8 experts (4 is the ablation's run; 1 expert is Static);
* steps sweep: dense teacher and ALTER (seed 0) sampled with 10/15/20/25/50 steps.

Every method is sampled for the same Shapes-T2I ``val`` prompts with the same
initial noise (DDIM, guidance 3) and scored with the benchmark's proxy metrics.
A point is skipped when its row is already in ``OUT/results.csv`` (a trained run
when its exported checkpoint exists), so a stopped study continues where it
stopped. At the end it writes ``OUT/summary.csv`` (mean and std over seeds),
``OUT/pareto.csv``, copies the expert files and scalar logs of the seed-0 runs
to ``OUT/runs/`` and draws every figure with ``analysis/make_figures.py``.
"""
import argparse
import fcntl
import fnmatch
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pandas as pd
import torch
from mmengine.config import Config

from alter.evaluation.benchmark import BenchmarkEvaluator, benchmark_prompts, default_metrics
from alter.inference.experts import load_experts, load_unet
from alter.inference.pipeline import TextToImage, generation_gmacs
from alter.inference.routing import ExpertRouter
from alter.registry import MODELS
from alter.utils.io import atomic_write

CONFIGS = {'ALTER': 'configs/alter/shapes_e4_s35.py',
           'Static': 'configs/alter/shapes_static_s35.py',
           'Manual': 'configs/alter/shapes_manual_e4_s35.py',
           'TwoStage': 'configs/alter/shapes_twostage_e4_s35.py'}
SEEDS = (0, 1, 2)
SPARSITIES = (0.45, 0.55)
EXPERT_COUNTS = (2, 8)
STEPS = (10, 15, 20, 25, 50)
FEW_STEPS = 20
SCHEDULER, GUIDANCE = 'ddim', 3.0
PLOTTED_RUNS = ('alter_s0', 'static_s0', 'manual_s0', 'twostage_s0')


@dataclass(frozen=True)
class Run:
    """One training run: ``method``'s config at a seed; ``tag`` names a sweep's setting."""
    method: str
    seed: int
    sparsity: float = 0.35
    num_experts: int = 4
    tag: str = ''

    @property
    def name(self) -> str:
        return f'{self.method.lower()}{self.tag}_s{self.seed}'


@dataclass(frozen=True)
class Point:
    """One results row: a run (None = the dense teacher) sampled with ``steps``."""
    study: str
    run: Optional[Run]
    steps: int

    @property
    def name(self) -> str:
        return f'{self.run.name if self.run else "dense"}@{self.steps}'


def study_points() -> List[Point]:
    """Every point, cheapest-first within what a partial study already needs."""
    ablation = [Run(m, s, num_experts=1 if m == 'Static' else 4) for s in SEEDS for m in CONFIGS]
    main = ablation[0]
    points = [Point('steps', None, n) for n in STEPS]
    points += [Point('ablation', run, FEW_STEPS) for run in ablation]
    points += [Point('steps', main, n) for n in STEPS if n != FEW_STEPS]
    points += [Point('sparsity', Run('ALTER', 0, sparsity=s, tag=f'_p{round(100 * s)}'), FEW_STEPS)
               for s in SPARSITIES]
    points += [Point('experts', Run('ALTER', 0, num_experts=e, tag=f'_e{e}'), FEW_STEPS)
               for e in EXPERT_COUNTS]
    return points


def run_options(run: Run) -> List[str]:
    """``--cfg-options`` of a run: seeds, and the sweep's setting where it differs."""
    options = [f'randomness.seed={run.seed}', f'model.seed={run.seed}']
    if run.tag:
        options += [f'model.target_sparsity={run.sparsity}', f'model.num_experts={run.num_experts}']
    return options


def train(run: Run, work_dir: Path, threads: int, extra_options: List[str]) -> Path:
    """Train and export ``run`` unless its checkpoint exists; returns the checkpoint dir."""
    run_dir, checkpoint = work_dir / run.name, work_dir / run.name / 'checkpoint'
    if (checkpoint / 'experts.json').exists():
        return checkpoint
    python, env = sys.executable, dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run([python, 'tools/train.py', CONFIGS[run.method], '--work-dir', str(run_dir),
                    '--cfg-options', *run_options(run), *extra_options], check=True, env=env)
    last = (run_dir / 'last_checkpoint').read_text().strip()
    subprocess.run([python, 'tools/export.py', last, '--out', str(checkpoint)], check=True,
                   env=env)
    return checkpoint


class Scorer:
    """Builds the frozen parts once; samples and scores one point at a time."""

    def __init__(self, num_prompts: int) -> None:
        cfg = Config.fromfile(CONFIGS['ALTER'])
        self.model = MODELS.build(cfg.model).eval()
        self.samples, self.captions, self.seeds = benchmark_prompts(num_prompts)
        self.evaluator = BenchmarkEvaluator(default_metrics(len(self.samples)))

    def __call__(self, point: Point, checkpoint: Optional[Path]) -> dict:
        row = dict(point=point.name, study=point.study, steps=point.steps,
                   method=f'{point.run.method if point.run else "dense"}-{point.steps}',
                   seed=point.run.seed if point.run else None,
                   sparsity=point.run.sparsity if point.run else None,
                   num_experts=point.run.num_experts if point.run else None)
        experts = None
        if checkpoint is None:
            generate = TextToImage.from_model(self.model, unet=self.model.teacher)
        else:
            experts = load_experts(checkpoint)
            unet = load_unet(checkpoint).eval()
            generate = TextToImage.from_model(self.model, unet=unet,
                                              router=ExpertRouter(unet, experts))
        images = generate(self.captions, self.seeds, point.steps, GUIDANCE, SCHEDULER)
        row['keep_ratio'] = experts.keep_ratio['fvcore'] if experts else 1.0
        row.update(generation_gmacs(self.model.costs, point.steps, SCHEDULER,
                                    self.model.scheduler.config, experts))
        row.update(self.evaluator(images, self.samples))
        return row


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format='%.6g'))


def append_row(row: dict, path: Path, lock_file: Path) -> pd.DataFrame:
    """Add ``row`` to the results CSV under a lock, so studies run side by side
    (disjoint ``--only`` patterns) never drop each other's rows."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = pd.read_csv(path) if path.exists() else pd.DataFrame()
        results = pd.concat([results, pd.DataFrame([row])], ignore_index=True)
        write_csv(results, path)
    return results


def summarise(results: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Mean and std over seeds of the ablation's methods; the Pareto view of the sweeps."""
    metrics = [c for c in results.columns if c.startswith(('fid_', 'kid_', 'alignment_'))
               and not c.endswith('_std')] + ['attribute_accuracy', 'keep_ratio']
    ablation = results[results.study == 'ablation']
    summary = ablation.groupby('method', sort=False)[metrics].agg(['mean', 'std'])
    summary.columns = [f'{m}_{stat}' for m, stat in summary.columns]
    summary.insert(0, 'seeds', ablation.groupby('method', sort=False).size())
    write_csv(summary.reset_index(), out / 'summary.csv')

    main = results[(results.seed == 0) & (results.sparsity == 0.35) & (results.num_experts == 4)
                   & results.method.str.startswith('ALTER')]
    pareto = pd.concat([
        results[results.method.str.startswith('dense')],
        main[main.study.isin(['steps', 'ablation'])].assign(variant='steps sweep'),
        pd.concat([main[main.steps == FEW_STEPS], results[results.study == 'sparsity']])
        .assign(variant='sparsity sweep')])
    write_csv(pareto.drop(columns=['seed', 'num_experts']), out / 'pareto.csv')
    return summary


def copy_run_logs(work_dir: Path, out: Path) -> List[Path]:
    """Expert file and scalar log of the seed-0 runs, in work-dir layout, for the figures."""
    copied = []
    for name in PLOTTED_RUNS:
        source = work_dir / name
        logs = sorted(source.glob('*/vis_data/scalars.json'))
        if not logs or not (source / 'experts.json').exists():
            continue
        target = out / 'runs' / name
        (target / 'log' / 'vis_data').mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / 'experts.json', target / 'experts.json')
        shutil.copyfile(logs[-1], target / 'log' / 'vis_data' / 'scalars.json')
        copied.append(target)
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/study', help='training runs')
    parser.add_argument('--out', default='docs/study', help='results, summary and figures')
    parser.add_argument('--num-prompts', type=int, default=200)
    parser.add_argument('--only', nargs='+', metavar='PATTERN',
                        help='points to run, as glob patterns of their names (see --list)')
    parser.add_argument('--threads', type=int, default=1,
                        help='threads per process (1 was fastest per core here)')
    parser.add_argument('--train-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='extra --cfg-options of every training run, e.g. train_cfg.max_iters=1200')
    parser.add_argument('--list', action='store_true', help='list the points and their state')
    args = parser.parse_args()
    work_dir, out = Path(args.work_dir), Path(args.out)
    results_file = out / 'results.csv'
    results = pd.read_csv(results_file) if results_file.exists() else pd.DataFrame()
    done = set(results.get('point', []))
    points = [p for p in study_points()
              if not args.only or any(fnmatch.fnmatch(p.name, pat) for pat in args.only)]
    if args.list:
        for point in points:
            print(f'{point.name:28s} {point.study:9s} {"done" if point.name in done else "todo"}')
        return

    torch.set_num_threads(args.threads)
    todo = [p for p in points if p.name not in done]
    print(f'{len(points) - len(todo)} of {len(points)} points done; {len(todo)} to run')
    scorer = Scorer(args.num_prompts) if todo else None
    for number, point in enumerate(todo, 1):
        print(f'[{number}/{len(todo)}] {point.name}', flush=True)
        checkpoint = train(point.run, work_dir, args.threads, args.train_options) if point.run else None
        results = append_row(scorer(point, checkpoint), results_file, work_dir / 'results.lock')

    summary = summarise(results, out)
    print(summary.to_string(float_format=lambda v: f'{v:.4g}'))
    runs = copy_run_logs(work_dir, out)
    subprocess.run([sys.executable, 'analysis/make_figures.py', *map(str, runs),
                    '--results', str(out / 'pareto.csv'), '--out', str(out / 'figures')],
                   check=True)


if __name__ == '__main__':
    main()
