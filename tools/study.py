"""The study on the embedded benchmark: does ALTER keep the teacher's quality, and do
temporal experts beat a static mask? Trains, evaluates and compares; resumable.

    python tools/study.py [--work-dir work_dirs/study] [--out docs/study]
        [--only PATTERN...] [--jobs 2] [--threads 1] [--list]

Runs (``tools/train.py`` then ``tools/export.py``; T_end = 30 % of the iterations,
the paper's fraction; batches from the teacher's latent cache,
``configs/_base_/datasets/shapes_t2i_cache.py``, made first if missing):

* ablation: Static, Manual, TwoStage and ALTER at sparsity 0.35, 4 experts, 2,000
  iterations, seeds 0/1/2; and, seed 0 only, ALTER with the low-frequency router input
  (``HyperNetRouter(min_period=100)``, an option beyond the paper);
* training length: ALTER and Static at 300 and 1,000 iterations (seed 0) and at 4,000
  (seeds 0/1/2: whether twice the training makes the seed matter less);
* sparsity: ALTER (seed 0) at 0.45 and 0.55.

They train in the order that answers the most first: the seed-0 ablation, the short
lengths, seeds 1 and 2, 4,000 iterations (seed 0 first), the sparsities.

Points (one row of ``OUT/results.csv`` each): every run sampled with 20 steps (seed-0
ALTER also with 10/15/25/50), and the dense teacher with 10/13/15/20/25/50 steps, all for
the same Shapes-T2I ``val`` prompts from the same initial noise (DDIM, guidance 3).
Each point is scored with the benchmark's proxies (FID/KID, attribute accuracy per
attribute, alignment) and paired fidelity (PSNR, SSIM, feature distance) against the
teacher's image at the same step count and at 50 steps, every number with a bootstrap
95 % interval; per-image values go to ``OUT/per_image/<point>.csv.gz``. Each trained
run also gets its per-timestep denoising gap (x0-space error against the teacher on
256 held-out pairs x 50 timesteps, routed with real skipping) in
``OUT/denoising_gap.csv`` (curves) and ``OUT/per_image/gap_<run>.csv.gz``, and its
routing statistics in ``OUT/routing.csv``; how far apart the masks of two seeds (or two
lengths) of one method are, in ``OUT/mask_distances.csv``. Where each run trained
(``trained_on`` in ``routing.csv``: the GPU, or the CPU and its threads) and where each point
was scored (``scored_on`` in ``results.csv``) is recorded beside the numbers.

Every run fits its mask table to the budget at T_end (``model.budget_fit=0.02``: a table
keeping more than 0.02 from its target 1 - s is moved onto it by one shift of every gate
threshold, an option beyond the paper, ``alter.models.budget_fit``). A run whose final keep
ratio is still more than 0.02 from the target missed its budget: it is reported
(``budget_met`` in ``OUT/routing.csv``) and left out of every comparison, since methods
compared "at equal MACs" must have them.

From these it writes ``OUT/summary.csv`` (ablation: mean and range over seeds),
``OUT/differences.csv`` (paired bootstrap intervals of ALTER - Static / TwoStage /
Manual, per seed and pooled, the pooled ones also with a Student-t interval over seeds,
and of ALTER-20 - dense at equal MACs and at 20 steps), ``OUT/pareto.csv`` and the
figures (``analysis/make_figures.py``, ``analysis/study_figures.py``). A trained run is
skipped when its checkpoint exists and a point when its row exists, so a stopped study
continues where it stopped; ``--only`` selects runs and points by glob pattern (see
``--list``).
"""
import argparse
import fcntl
import fnmatch
import itertools
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from mmengine.config import Config

from alter.datasets.latent_cache import cache_cfg_options
from alter.datasets.shapes import ShapesT2I, collate
from alter.evaluation.benchmark import BenchmarkEvaluator, benchmark_prompts, default_metrics
from alter.evaluation.denoising_gap import x0_predictions
from alter.evaluation.image_store import from_uint8, to_uint8
from alter.evaluation.intervals import paired_difference, seed_interval, summary
from alter.inference.experts import load_experts, load_unet
from alter.inference.pipeline import TextToImage, generation_gmacs
from alter.inference.routing import ExpertRouter
from alter.models.alter import routing_segments
from alter.registry import MODELS
from alter.units.macs import MacTable
from alter.utils.io import atomic_write
from alter.utils.timing import device_name

# method -> (config, extra --cfg-options)
METHODS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    'Static': ('configs/alter/shapes_static_s35.py', ()),
    'Manual': ('configs/alter/shapes_manual_e4_s35.py', ()),
    'TwoStage': ('configs/alter/shapes_twostage_e4_s35.py', ()),
    'ALTER': ('configs/alter/shapes_e4_s35.py', ()),
    'ALTER-lowfreq': ('configs/alter/shapes_e4_s35.py', ('model.hypernet.router.min_period=100', )),
}
T_END_FRACTION = 0.3  # T_end / iterations, the paper's 9,375 / 32,000
# |keep ratio - (1 - sparsity)| of a run that met its budget; every run fits its table to it
# at T_end (model.budget_fit), so that methods compared at equal MACs have them.
BUDGET_TOLERANCE = 0.02
CHECKPOINT_EVERY = 250
HARDWARE_FILE = 'hardware.txt'  # in each run dir: where it trained
SCHEDULER, GUIDANCE = 'ddim', 3.0


@dataclass(frozen=True)
class Plan:
    """What the study runs and measures; ``PLAN`` is the study, tests run smaller ones."""
    methods: Tuple[str, ...] = ('ALTER', 'Static', 'Manual', 'TwoStage')  # every seed
    options: Tuple[str, ...] = ('ALTER-lowfreq', )  # seed 0 only
    seeds: Tuple[int, ...] = (0, 1, 2)
    iters: int = 2000  # of the ablation runs
    lengths: Tuple[int, ...] = (300, 1000, 4000)  # more training lengths (ALTER, Static)
    sparsities: Tuple[float, ...] = (0.45, 0.55)  # more sparsities (ALTER)
    dense_steps: Tuple[int, ...] = (10, 13, 15, 20, 25, 50)
    alter_steps: Tuple[int, ...] = (10, 15, 25, 50)  # more step counts (ALTER, seed 0)
    few_steps: int = 20
    reference_steps: int = 50
    equal_macs_steps: int = 13  # dense steps with ALTER-20's MACs at keep ratio 0.65
    gap_pairs: int = 256
    gap_grid: Tuple[int, ...] = tuple(range(10, 1000, 20))  # 50 timesteps
    num_prompts: int = 1000
    budget_tolerance: float = BUDGET_TOLERANCE  # of a run that met its budget


PLAN = Plan()
PLOTTED = ('ALTER', 'ALTER-lowfreq', 'Static', 'Manual', 'TwoStage')  # seed 0, ablation length
# The latent cache of configs/_base_/datasets/shapes_t2i_cache.py, and how it is made.
CACHE = 'work_dirs/shapes_cache'
CACHE_SOURCE = ('train_dataloader.dataset._delete_=True', 'train_dataloader.dataset.type=ShapesT2I',
                'train_dataloader.dataset.split=train',
                'train_dataloader.dataset.num_samples=160000', 'train_dataloader.dataset.seed=0')


@dataclass(frozen=True)
class Run:
    """One training run of ``method`` at a seed, length and sparsity."""
    method: str
    seed: int
    iters: int
    sparsity: float = 0.35

    @property
    def name(self) -> str:
        sparsity = '' if self.sparsity == 0.35 else f'_p{round(100 * self.sparsity)}'
        return f'{self.method.lower()}_i{self.iters}{sparsity}_s{self.seed}'

    @property
    def num_experts(self) -> int:
        return 1 if self.method == 'Static' else 4

    def options(self, cache: Optional[str]) -> List[str]:
        """``--cfg-options`` of the run: length, T_end, budget fit, seeds, sparsity, data,
        the method's own."""
        return [f'train_cfg.max_iters={self.iters}',
                f'model.hypernet_iters={max(1, round(T_END_FRACTION * self.iters))}',
                f'model.budget_fit={BUDGET_TOLERANCE}',
                f'randomness.seed={self.seed}', f'model.seed={self.seed}',
                f'model.target_sparsity={self.sparsity}',
                *(cache_cfg_options(cache) if cache else []),
                # a checkpoint every CHECKPOINT_EVERY iterations: a stopped run resumes
                f'default_hooks.checkpoint.interval={CHECKPOINT_EVERY}',
                # the UNet step the committed runs trained with (the default until the
                # 'selected' step, which gives the same updates up to float rounding)
                'model.unet_step.type=blended',
                *METHODS[self.method][1]]


@dataclass(frozen=True)
class Point:
    """One results row: a run (None = the dense teacher) sampled with ``steps``."""
    study: str
    run: Optional[Run]
    steps: int

    @property
    def name(self) -> str:
        return f'{self.run.name if self.run else "dense"}@{self.steps}'


def study_runs(plan: Plan) -> List[Run]:
    first, *more = plan.seeds
    short = [n for n in plan.lengths if n < plan.iters]
    runs = [Run(m, first, plan.iters) for m in plan.methods + plan.options]
    runs += [Run(m, first, n) for n in short for m in ('ALTER', 'Static')]
    runs += [Run(m, s, plan.iters) for s in more for m in plan.methods]
    # Longer runs at every seed: whether more training makes the seed matter less.
    runs += [Run(m, s, n) for n in plan.lengths if n not in short for s in plan.seeds
             for m in ('ALTER', 'Static')]
    runs += [Run('ALTER', first, plan.iters, sparsity=s) for s in plan.sparsities]
    return runs


def run_study(run: Run, plan: Plan) -> str:
    """The part of the study a run belongs to: ``ablation``, ``length`` or ``sparsity``."""
    return ('ablation' if run.iters == plan.iters and run.sparsity == 0.35 else
            'length' if run.iters != plan.iters else 'sparsity')


def study_points(plan: Plan) -> List[Point]:
    points = [Point('dense', None, n) for n in plan.dense_steps]
    points += [Point(run_study(run, plan), run, plan.few_steps) for run in study_runs(plan)]
    points += [Point('steps', Run('ALTER', 0, plan.iters), n) for n in plan.alter_steps]
    return points


def selected(name: str, patterns: Optional[Sequence[str]]) -> bool:
    return not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)


# -- training ------------------------------------------------------------------------------

def checkpoint_dir(run: Run, work_dir: Path) -> Path:
    return work_dir / run.name / 'checkpoint'


def train(run: Run, work_dir: Path, threads: int, cache: Optional[str]) -> Path:
    """Train and export ``run`` unless its checkpoint exists; returns the checkpoint dir.
    The log goes to ``<run dir>/train.log``."""
    run_dir, checkpoint = work_dir / run.name, checkpoint_dir(run, work_dir)
    if (checkpoint / 'experts.json').exists():
        return checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    python, env = sys.executable, dict(os.environ, OMP_NUM_THREADS=str(threads))
    with open(run_dir / HARDWARE_FILE, 'a') as record:  # one line per session of the run
        record.write(f'{training_device(threads)}\n')
    resume = ['--resume'] if (run_dir / 'last_checkpoint').exists() else []
    with open(run_dir / 'train.log', 'a') as log:
        subprocess.run([python, 'tools/train.py', METHODS[run.method][0], '--work-dir',
                        str(run_dir), *resume, '--cfg-options', *run.options(cache)],
                       check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
        last = (run_dir / 'last_checkpoint').read_text().strip()
        subprocess.run([python, 'tools/export.py', last, '--out', str(checkpoint)], check=True,
                       env=env, stdout=log, stderr=subprocess.STDOUT)
    return checkpoint


def training_device(threads: int) -> str:
    """Where tools/train.py runs (mmengine takes the GPU when there is one), in words."""
    return device_name(torch.device('cuda' if torch.cuda.is_available() else 'cpu'), threads)


def ensure_cache(cache: str, threads: int) -> None:
    """Make (or finish) the latent cache the runs train on; seconds when it is complete."""
    print(f'latent cache {cache} (about 11 minutes on one core when new)', flush=True)
    subprocess.run([sys.executable, 'tools/precompute_cache.py', 'configs/teacher/shapes_dense.py',
                    '--out', cache, '--batch-size', '64', '--shard-size', '4000', '--dtype',
                    'float16', '--cfg-options', *CACHE_SOURCE], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS=str(threads)))


def train_all(runs: Sequence[Run], work_dir: Path, jobs: int, threads: int,
              cache: Optional[str]) -> None:
    """Train ``runs`` in ``jobs`` parallel processes, reporting each as it finishes."""
    todo = [r for r in runs if not (checkpoint_dir(r, work_dir) / 'experts.json').exists()]
    if todo and cache is not None:
        ensure_cache(cache, threads)
    print(f'{len(runs) - len(todo)} of {len(runs)} runs trained; {len(todo)} to train '
          f'({jobs} at a time; logs in {work_dir}/<run>/train.log)', flush=True)
    started = time.perf_counter()

    def one(run: Run) -> str:
        train(run, work_dir, threads, cache)
        return run.name

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for number, name in enumerate(pool.map(one, todo), 1):
            minutes = (time.perf_counter() - started) / 60
            print(f'[{number}/{len(todo)}] trained {name} ({minutes:.0f} min)', flush=True)


# -- scoring -------------------------------------------------------------------------------

def study_metrics(num_images: int) -> List[dict]:
    """The benchmark's proxies and paired fidelity to the teacher's images."""
    return default_metrics(num_images) + [
        dict(type='PairedFidelity', reference_key='teacher_image', name='teacher'),
        dict(type='PairedFidelity', reference_key='dense50_image', name='dense50')]


class Scorer:
    """Builds the frozen parts once; samples and scores one point or run at a time.

    The teacher's images of each step count are made once and kept in
    ``WORK_DIR/images/dense@<steps>.pt`` (uint8), as the paired references.
    """

    def __init__(self, plan: Plan, work_dir: Path) -> None:
        cfg = Config.fromfile(METHODS['ALTER'][0])
        self.model = MODELS.build(cfg.model).eval()
        self.plan = plan
        self.samples, self.captions, self.seeds = benchmark_prompts(plan.num_prompts)
        metrics = study_metrics(len(self.samples))
        self.student_evaluator = BenchmarkEvaluator(metrics)
        # The teacher against its own images at the same step count says nothing.
        self.dense_evaluator = BenchmarkEvaluator(
            [m for m in metrics if m.get('reference_key') != 'teacher_image'])
        self.image_dir = work_dir / 'images'
        self.gap_inputs: Optional[tuple] = None

    def generate(self, steps: int, unet=None, router=None) -> torch.Tensor:
        model = self.model
        generate = TextToImage.from_model(model, unet=unet if unet is not None else model.teacher,
                                          router=router)
        return generate(self.captions, self.seeds, steps, GUIDANCE, SCHEDULER)

    def teacher_images(self, steps: int) -> torch.Tensor:
        path = self.image_dir / f'dense@{steps}.pt'
        if path.exists():
            pixels = torch.load(path, weights_only=True)
            if len(pixels) == len(self.samples):
                return from_uint8(pixels.numpy())
        images = self.generate(steps)
        atomic_write(path, lambda tmp: torch.save(torch.from_numpy(to_uint8(images)), tmp))
        return from_uint8(to_uint8(images))  # scored as stored: 8-bit, like the students

    def point(self, point: Point, checkpoint: Optional[Path]) -> Tuple[dict, pd.DataFrame]:
        """The results row of a point and its per-image scores."""
        row = dict(point=point.name, study=point.study, steps=point.steps,
                   method=f'{point.run.method if point.run else "dense"}-{point.steps}',
                   run=point.run.name if point.run else 'dense',
                   seed=point.run.seed if point.run else None,
                   iters=point.run.iters if point.run else None,
                   sparsity=point.run.sparsity if point.run else None,
                   num_experts=point.run.num_experts if point.run else None,
                   num_prompts=len(self.samples), scored_on=device_name(torch.device('cpu')))
        experts = None
        references = {'dense50_image': self.teacher_images(self.plan.reference_steps)}
        if checkpoint is None:
            images = self.teacher_images(point.steps)
        else:
            experts = load_experts(checkpoint)
            unet = load_unet(checkpoint).eval()
            images = from_uint8(to_uint8(self.generate(point.steps, unet,
                                                       ExpertRouter(unet, experts))))
            references['teacher_image'] = self.teacher_images(point.steps)
        evaluator = self.dense_evaluator if checkpoint is None else self.student_evaluator
        row['keep_ratio'] = experts.keep_ratios(self.model.costs)['fvcore'] if experts else 1.0
        row.update(generation_gmacs(self.model.costs, point.steps, SCHEDULER,
                                    self.model.scheduler.config, experts))
        row.update(evaluator(images, self.samples, references))
        per_image = pd.DataFrame(evaluator.per_image())
        per_image.insert(0, 'prompt', range(len(self.samples)))
        return row, per_image

    def gap(self, checkpoint: Path) -> pd.DataFrame:
        """Per-(pair, timestep) x0-space gap of a routed student to the teacher."""
        model, pairs, grid = self.model, self.plan.gap_pairs, self.plan.gap_grid
        if self.gap_inputs is None:
            batch = collate([ShapesT2I('val', pairs, seed=1)[i] for i in range(pairs)])
            images, f = batch['image'], model.autoencoder.scale_factor
            latent_shape = (pairs, model.autoencoder.latent_channels,
                            images.shape[-2] // f, images.shape[-1] // f)
            with torch.no_grad():  # zero noise: the posterior mean
                x0 = model.autoencoder.encode(images, torch.zeros(latent_shape))
                context = model.text_encoder(batch['caption'])
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
            teacher = x0_predictions(model.teacher, model.scheduler, x0, noise, context, grid)
            self.gap_inputs = (x0, noise, context, teacher)
        x0, noise, context, teacher = self.gap_inputs
        experts, unet = load_experts(checkpoint), load_unet(checkpoint).eval()
        student = x0_predictions(unet, model.scheduler, x0, noise, context, grid,
                                 ExpertRouter(unet, experts))
        gaps = (student.double() - teacher.double()).pow(2).flatten(2).mean(2)  # (T, N)
        return pd.DataFrame(dict(pair=np.tile(np.arange(pairs), len(grid)),
                                 timestep=np.repeat(grid, pairs), gap=gaps.flatten().numpy()))


# -- results files -------------------------------------------------------------------------

def write_csv(frame: pd.DataFrame, path: Path) -> None:
    compression = 'gzip' if path.suffix == '.gz' else None
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format='%.6g',
                                                compression=compression))


def append_row(row: dict, path: Path, lock_file: Path) -> pd.DataFrame:
    """Add ``row`` to a CSV under a lock, so studies run side by side (disjoint
    ``--only`` patterns) never drop each other's rows."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = pd.read_csv(path) if path.exists() else pd.DataFrame()
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        write_csv(table, path)
    return table


def met_budget(keep_ratio: float, sparsity: float, plan: Plan) -> bool:
    """Whether a run's final keep ratio (fvcore MACs, averaged over timesteps) is within
    ``plan.budget_tolerance`` of its target 1 - s."""
    return abs(keep_ratio - (1 - sparsity)) <= plan.budget_tolerance


def budget_misses(results: pd.DataFrame, plan: Plan) -> Dict[str, float]:
    """Points whose run missed its budget -> their keep ratio. Methods compared at
    "equal MACs" must have equal MACs, so these are left out of every comparison."""
    students = results[results.run != 'dense'] if 'run' in results else results
    return {row.point: row.keep_ratio for row in students.itertuples()
            if not met_budget(row.keep_ratio, row.sparsity, plan)}


def routing_row(run: Run, checkpoint: Path, work_dir: Path, costs: Dict[str, MacTable],
                plan: Plan) -> dict:
    """Routing statistics of a run's final table and of its training log."""
    experts = load_experts(checkpoint)
    route = torch.tensor(experts.route)
    keep_ratio = experts.keep_ratios(costs)['fvcore']
    row = dict(run=run.name, method=run.method, seed=run.seed, iters=run.iters,
               sparsity=run.sparsity, segments=routing_segments(route), keep_ratio=keep_ratio,
               budget_met=met_budget(keep_ratio, run.sparsity, plan))
    record = work_dir / run.name / HARDWARE_FILE
    if record.exists():
        row['trained_on'] = '; '.join(dict.fromkeys(record.read_text().split('\n')[:-1]))
    for e in range(experts.num_experts):
        own = (route == e).long()
        row[f'expert{e}_usage'] = own.float().mean().item()
        row[f'expert{e}_segments'] = int(((own[1:] == 1) & (own[:-1] == 0)).sum() + own[0])
    # A resumed run has one log per session; the last that logged the router counts.
    for log in sorted((work_dir / run.name).glob('*/vis_data/scalars.json'), reverse=True):
        scalars = pd.read_json(log, lines=True)
        if 'hyper/router_entropy' in scalars and scalars['hyper/router_entropy'].notna().any():
            row['router_entropy_final'] = float(scalars['hyper/router_entropy'].dropna().iloc[-1])
            break
    return row


def routed_masks(checkpoint: Path) -> np.ndarray:
    """(T, N_L) bool: the mask each training timestep is routed to."""
    experts = load_experts(checkpoint)
    return np.array(experts.masks, dtype=bool)[np.array(experts.route)]


def mask_distances(runs: Sequence[Run], work_dir: Path) -> pd.DataFrame:
    """How much the mask search depends on the seed and on its length: for two runs of one
    method and sparsity that differ in seed or in length (not both), the fraction of units
    on which their routed masks differ, averaged over the timesteps; ``chance`` is that
    fraction for independent masks that keep as many units as each run does."""
    masks = {run: routed_masks(checkpoint_dir(run, work_dir)) for run in runs}
    rows = []
    for a, b in itertools.combinations(runs, 2):
        if (a.method, a.sparsity) != (b.method, b.sparsity) or \
                (a.seed != b.seed) == (a.iters != b.iters):
            continue
        x, y = masks[a], masks[b]
        keep_a, keep_b = x.mean(), y.mean()
        rows.append(dict(method=a.method, sparsity=a.sparsity, seed_a=a.seed, seed_b=b.seed,
                         iters_a=a.iters, iters_b=b.iters, units=x.shape[1],
                         distance=float((x != y).mean()),
                         chance=float(keep_a * (1 - keep_b) + keep_b * (1 - keep_a))))
    return pd.DataFrame(rows)


def gap_curve(run: Run, plan: Plan, gaps: pd.DataFrame) -> pd.DataFrame:
    """Mean gap per timestep with its bootstrap interval over pairs."""
    rows = [dict(run=run.name, method=run.method, study=run_study(run, plan), seed=run.seed,
                 iters=run.iters, sparsity=run.sparsity, timestep=t,
                 **summary(part.gap.to_numpy()))
            for t, part in gaps.groupby('timestep')]
    return pd.DataFrame(rows)


# -- comparisons ---------------------------------------------------------------------------

COMPARED = ('attribute_accuracy', 'attribute_accuracy/colour', 'attribute_accuracy/shape',
            'attribute_accuracy/size', 'attribute_accuracy/count', 'attribute_accuracy/relation',
            'attribute_accuracy/background', 'alignment_lit_minilm_effnet',
            'paired_dense50/psnr', 'paired_dense50/ssim', 'paired_dense50/feature_distance')
GAP_BANDS = {'all': (0, 999), 't000-249': (0, 249), 't250-499': (250, 499),
             't500-749': (500, 749), 't750-999': (750, 999)}
COMPARED_GAPS = tuple(f'denoising_gap/{band}' for band in GAP_BANDS)


@lru_cache(maxsize=64)
def _read(path: Path) -> Optional[pd.DataFrame]:
    return pd.read_csv(path) if path.exists() else None


def point_scores(out: Path, point: str, metric: str) -> Optional[np.ndarray]:
    """Per-image scores of a point, or for ``denoising_gap/<band>`` the per-pair gap of
    its run averaged over the band's timesteps; None when not there."""
    if metric.startswith('denoising_gap/'):
        gaps = _read(out / 'per_image' / f'gap_{point.split("@")[0]}.csv.gz')
        if gaps is None:
            return None
        low, high = GAP_BANDS[metric.split('/')[1]]
        band = gaps[(gaps.timestep >= low) & (gaps.timestep <= high)]
        return band.groupby('pair').gap.mean().to_numpy()
    table = _read(out / 'per_image' / f'{point}.csv.gz')
    return None if table is None or metric not in table else table[metric].to_numpy()


def comparisons(plan: Plan) -> List[Tuple[str, Optional[int], str, str]]:
    """(label, seed, point a, point b) of every paired difference a - b the study reports."""
    pairs, few = [], plan.few_steps
    for seed in plan.seeds:
        name = lambda method: f'{Run(method, seed, plan.iters).name}@{few}'  # noqa: E731
        for label, a, b in (('ALTER - Static', 'ALTER', 'Static'),
                            ('ALTER - TwoStage', 'ALTER', 'TwoStage'),
                            ('ALTER - Manual', 'ALTER', 'Manual'),
                            ('ALTER-lowfreq - ALTER', 'ALTER-lowfreq', 'ALTER'),
                            ('ALTER-lowfreq - Static', 'ALTER-lowfreq', 'Static')):
            pairs.append((label, seed, name(a), name(b)))
        for steps in (plan.equal_macs_steps, few):
            pairs.append((f'ALTER-{few} - dense-{steps}', seed, name('ALTER'),
                          f'dense@{steps}'))
    for n in sorted(plan.lengths + (plan.iters, )):  # lengths past plan.iters at every seed
        for seed in plan.seeds if n > plan.iters else plan.seeds[:1]:
            name = lambda method: f'{Run(method, seed, n).name}@{few}'  # noqa: E731
            pairs.append((f'ALTER - Static at {n} iterations', seed, name('ALTER'),
                          name('Static')))
            if n > plan.iters:
                pairs += [(f'{m}-{few} - dense-{few} at {n} iterations', seed, name(m),
                           f'dense@{few}') for m in ('ALTER', 'Static')]
    return pairs


def differences(out: Path, plan: Plan, missed: Sequence[str] = ()) -> pd.DataFrame:
    """Paired differences of every comparison and metric, per seed and pooled over seeds
    (the per-image differences of all seeds together: a bootstrap over (seed, prompt), which
    holds the trained runs fixed; beside it ``seeds_ci_low``/``seeds_ci_high``, the Student-t
    interval over the per-seed mean differences, which counts each run as one draw of its
    training seed); comparisons with a point in ``missed`` (a run off its budget) are left out."""
    rows, pools = [], {}
    for label, seed, a, b in comparisons(plan):
        if a in missed or b in missed:
            continue
        for metric in COMPARED + COMPARED_GAPS:
            x, y = point_scores(out, a, metric), point_scores(out, b, metric)
            if x is None or y is None:
                continue
            rows.append(dict(comparison=label, seed=seed, a=a, b=b, metric=metric,
                             **paired_difference(x, y)))
            if seed is not None:
                pools.setdefault((label, metric), []).append((x, y))
    for (label, metric), pairs in pools.items():
        if len(pairs) > 1:
            per_seed = [np.nanmean(x - y) for x, y in pairs]
            low, high = seed_interval(np.array(per_seed))
            rows.append(dict(comparison=label, seed='pooled', a='', b='', metric=metric,
                             **paired_difference(np.concatenate([x for x, _ in pairs]),
                                                 np.concatenate([y for _, y in pairs])),
                             seeds=len(pairs), seeds_ci_low=low, seeds_ci_high=high))
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame, out: Path, plan: Plan) -> pd.DataFrame:
    """Ablation methods: mean, min and max over seeds of every metric; the Pareto table."""
    metrics = [c for c in results.columns if not c.endswith(('_ci_low', '_ci_high', '_std'))
               and (c.startswith(('fid_', 'kid_', 'alignment_', 'attribute_accuracy',
                                  'paired_')) or c == 'keep_ratio')]
    ablation = results[results.study == 'ablation']
    summary_table = ablation.groupby('method', sort=False)[metrics].agg(['mean', 'min', 'max'])
    summary_table.columns = [f'{m}_{stat}' for m, stat in summary_table.columns]
    summary_table.insert(0, 'seeds', ablation.groupby('method', sort=False).size())
    write_csv(summary_table.reset_index(), out / 'summary.csv')

    main_run = Run('ALTER', 0, plan.iters).name
    main = results[results.run == main_run]
    others = results[(results.study == 'ablation') & (results.run != main_run)]
    pareto = pd.concat([
        results[results.run == 'dense'].assign(variant='dense, steps sweep'),
        main.assign(variant='ALTER, steps sweep'),
        pd.concat([main[main.steps == plan.few_steps], results[results.study == 'sparsity']])
        .assign(variant='ALTER, sparsity sweep'),
        others.assign(variant=others.method.str.rsplit('-', n=1).str[0] + ', ablation')])
    write_csv(pareto, out / 'pareto.csv')
    return summary_table


def copy_run_logs(work_dir: Path, out: Path, plan: Plan) -> List[Path]:
    """Expert file and scalar log of the seed-0 runs, in work-dir layout, for the figures."""
    copied = []
    for method in PLOTTED:
        name = Run(method, 0, plan.iters).name
        source = work_dir / name
        logs = sorted(source.glob('*/vis_data/scalars.json'))
        if not logs or not (source / 'experts.json').exists():
            continue
        target = out / 'runs' / name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / 'experts.json', target / 'experts.json')
        for log in logs:  # every session of a resumed run; analysis/ merges them
            session = target / log.parent.parent.name / 'vis_data'
            session.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, session / 'scalars.json')
        copied.append(target)
    return copied


def main(argv: Optional[Sequence[str]] = None, plan: Plan = PLAN) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/study', help='training runs, images')
    parser.add_argument('--out', default='docs/study', help='results, comparisons, figures')
    parser.add_argument('--only', nargs='+', metavar='PATTERN',
                        help='runs and points to do, as glob patterns of their names (--list)')
    parser.add_argument('--jobs', type=int, default=2, help='training runs side by side')
    parser.add_argument('--threads', type=int, default=1,
                        help='threads per process (1 was fastest per core here)')
    parser.add_argument('--cache', default=CACHE,
                        help="latent cache the runs train on (made if missing); 'none': render "
                        'and encode every batch instead')
    parser.add_argument('--list', action='store_true', help='list runs and points, and their state')
    args = parser.parse_args(argv)
    work_dir, out = Path(args.work_dir), Path(args.out)
    results_file = out / 'results.csv'
    results = pd.read_csv(results_file) if results_file.exists() else pd.DataFrame()
    done = set(results.get('point', []))
    runs = [r for r in study_runs(plan) if selected(r.name, args.only)]
    points = [p for p in study_points(plan) if selected(p.name, args.only)]
    if args.list:
        for run in runs:
            trained = (checkpoint_dir(run, work_dir) / 'experts.json').exists()
            print(f'run   {run.name:28s} {"trained" if trained else "todo"}')
        for point in points:
            state = 'done' if point.name in done else 'todo'
            print(f'point {point.name:28s} {point.study:9s} {state}')
        return

    torch.set_num_threads(args.threads)
    train_all(runs, work_dir, args.jobs, args.threads, None if args.cache == 'none' else args.cache)
    todo = [p for p in points if p.name not in done]
    print(f'{len(points) - len(todo)} of {len(points)} points scored; {len(todo)} to score',
          flush=True)
    scorer = Scorer(plan, work_dir)
    lock = work_dir / 'results.lock'
    for number, point in enumerate(todo, 1):
        print(f'[{number}/{len(todo)}] scoring {point.name}', flush=True)
        checkpoint = checkpoint_dir(point.run, work_dir) if point.run else None
        row, per_image = scorer.point(point, checkpoint)
        write_csv(per_image, out / 'per_image' / f'{point.name}.csv.gz')
        results = append_row(row, results_file, lock)

    for run in runs:
        gap_path = out / 'per_image' / f'gap_{run.name}.csv.gz'
        if not gap_path.exists() and (checkpoint_dir(run, work_dir) / 'experts.json').exists():
            print(f'denoising gap of {run.name}', flush=True)
            write_csv(scorer.gap(checkpoint_dir(run, work_dir)), gap_path)
    write_derived(work_dir, out, plan, results, scorer.model.costs)


def write_derived(work_dir: Path, out: Path, plan: Plan, results: pd.DataFrame,
                  costs: Dict[str, MacTable]) -> None:
    """Tables and figures over every run and point there is so far (seconds; rebuilt
    on each call, so a partial study shows what it has)."""
    trained = [r for r in study_runs(plan)
               if (checkpoint_dir(r, work_dir) / 'experts.json').exists()]
    if trained:
        write_csv(pd.DataFrame([routing_row(r, checkpoint_dir(r, work_dir), work_dir, costs, plan)
                                for r in trained]), out / 'routing.csv')
        distances = mask_distances(trained, work_dir)
        if not distances.empty:
            write_csv(distances, out / 'mask_distances.csv')
    gap_files = {r: out / 'per_image' / f'gap_{r.name}.csv.gz' for r in trained}
    curves = [gap_curve(r, plan, pd.read_csv(path)) for r, path in gap_files.items()
              if path.exists()]
    if curves:
        write_csv(pd.concat(curves), out / 'denoising_gap.csv')
    if results.empty:
        return
    summary_table = summarise(results, out, plan)
    if not summary_table.empty:
        print(summary_table.to_string(float_format=lambda v: f'{v:.4g}'))
    missed = budget_misses(results, plan)
    for point, keep_ratio in missed.items():
        print(f'{point} missed its budget (keep ratio {keep_ratio:.3f}, target within '
              f'{plan.budget_tolerance} of 1 - sparsity): left out of the comparisons', flush=True)
    compared = differences(out, plan, missed)
    if not compared.empty:
        write_csv(compared, out / 'differences.csv')
    runs_copied = copy_run_logs(work_dir, out, plan)
    subprocess.run([sys.executable, 'analysis/make_figures.py', *map(str, runs_copied),
                    '--results', str(out / 'pareto.csv'), '--out', str(out / 'figures')],
                   check=True)
    subprocess.run([sys.executable, 'analysis/study_figures.py', str(out), '--out',
                    str(out / 'figures')], check=True)

if __name__ == '__main__':
    main()
