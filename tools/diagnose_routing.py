"""Why does the learned routing fragment? Tests the candidate causes one at a time.

    python tools/diagnose_routing.py [--out docs/study/routing_diagnosis.csv]
        [--work-dir work_dirs/routing_diagnosis] [--iters 600] [--jobs 2]

A temporal expert should own contiguous timesteps; the number of contiguous segments
of the routing table (``routing_segments``: N_E when each expert owns one interval,
up to 1000) measures how far from that a table is. Two parts:

* **at initialisation** (no training): freshly built ``HyperNetwork`` routers over 5
  seeds, on the sinusoidal ``time_proj`` of the embedded UNet (32-d) and of SD2.1
  (320-d), as the paper specifies, against the same features restricted to their slow
  components (``HyperNetRouter(min_period=100)``) and a scalar t / 1000;
* **in training**: the hypernetwork phase of the embedded ALTER config
  (``configs/alter/shapes_e4_s35.py``, seed 0, ``--iters`` iterations with the
  hypernetwork trained throughout) as configured, then with one change each: the
  paper's hypernetwork learning rate 7e-5, no balance term, routing temperature 1.0,
  the slow router input. Each run logs ``routing_segments`` and
  ``hyper/router_entropy`` at every logged iteration.

Writes one row per (variant, seed or iteration) to ``--out`` and prints a summary.
Training runs are resumable (a finished run is read back, not retrained).
"""
import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd
import torch
from diffusers.models.embeddings import get_timestep_embedding

from alter.datasets.latent_cache import cache_cfg_options
from alter.models.alter import routing_segments
from alter.models.hypernet import HyperNetwork
from alter.utils.io import atomic_write

CONFIG = 'configs/alter/shapes_e4_s35.py'
NUM_UNITS, NUM_EXPERTS, NUM_TIMESTEPS = 34, 4, 1000
SLOW = 100  # min_period of the slow router input, in timesteps
# variant -> --cfg-options (on top of the run length)
TRAINING_VARIANTS: Dict[str, List[str]] = {
    'as configured (time_proj, lr 2e-3, balance 1, tau 0.4)': [],
    'hypernetwork lr 7e-5 (paper)': ['optim_wrapper.hypernet.optimizer.lr=7e-5'],
    'no balance term': ['model.loss_weights.balance=0'],
    'routing temperature 1.0': ['model.hypernet.route_tau=1.0'],
    f'slow router input (min_period={SLOW})': [f'model.hypernet.router.min_period={SLOW}'],
    'smoothness penalty, weight 1': ['model.loss_weights.smooth=1.0'],
    'smoothness penalty, weight 10': ['model.loss_weights.smooth=10.0'],
}


def sinusoidal(dim: int) -> torch.Tensor:
    """(T, dim) ``time_proj`` of SD-style UNets (flip_sin_to_cos, no shift), t = 0..T-1."""
    return get_timestep_embedding(torch.arange(NUM_TIMESTEPS), dim, flip_sin_to_cos=True,
                                  downscale_freq_shift=0).float()


def segments_at_init(features: torch.Tensor, seed: int, min_period: Optional[float]) -> int:
    torch.manual_seed(seed)
    router = dict(type='HyperNetRouter', min_period=min_period)
    _, route = HyperNetwork(NUM_UNITS, NUM_EXPERTS, features, router=router).table()
    return routing_segments(route)


def init_rows(seeds: int = 5) -> List[dict]:
    rows = []
    for backbone, dim in (('embedded UNet (32-d time_proj)', 32), ('SD2.1 (320-d time_proj)', 320)):
        features = sinusoidal(dim)
        inputs = {'time_proj (paper)': (features, None),
                  f'time_proj, slow components (min_period={SLOW})': (features, SLOW),
                  'scalar t / 1000': (torch.arange(NUM_TIMESTEPS)[:, None] / NUM_TIMESTEPS, None)}
        for name, (x, min_period) in inputs.items():
            for seed in range(seeds):
                rows.append(dict(part='init', backbone=backbone, variant=name, seed=seed,
                                 iteration=0, segments=segments_at_init(x, seed, min_period)))
    return rows


def train_variant(name: str, options: List[str], iters: int, work_dir: Path,
                  cache: Optional[str]) -> Path:
    """The hypernetwork phase of the embedded config with ``options``; its work dir."""
    run_dir = work_dir / re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')
    if sorted(run_dir.glob('*/vis_data/scalars.json')) and (run_dir / 'experts.json').exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    with open(run_dir / 'train.log', 'w') as log:
        subprocess.run([sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(run_dir),
                        '--cfg-options', f'train_cfg.max_iters={iters}',
                        f'model.hypernet_iters={iters}', 'default_hooks.logger.interval=20',
                        *(cache_cfg_options(cache) if cache else []), *options],
                       check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    return run_dir


def training_rows(run_dir: Path, name: str) -> List[dict]:
    scalars = pd.read_json(sorted(run_dir.glob('*/vis_data/scalars.json'))[-1], lines=True)
    usage = [c for c in scalars.columns if c.startswith('usage_expert')]
    return [dict(part='training', backbone='embedded UNet', variant=name, seed=0,
                 iteration=int(r.step), segments=int(r.routing_segments),
                 router_entropy=float(r['hyper/router_entropy']),
                 largest_expert_share=float(max(r[c] for c in usage)))
            for _, r in scalars.iterrows()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='docs/study/routing_diagnosis.csv')
    parser.add_argument('--work-dir', default='work_dirs/routing_diagnosis')
    parser.add_argument('--iters', type=int, default=600, help='hypernetwork updates per run')
    parser.add_argument('--jobs', type=int, default=2, help='training runs side by side')
    parser.add_argument('--cache', default='work_dirs/shapes_cache',
                        help="latent cache the runs train on (configs/_base_/datasets/"
                        "shapes_t2i_cache.py says how to make it); 'none': render and encode")
    args = parser.parse_args()
    cache = None if args.cache == 'none' else args.cache
    torch.set_num_threads(1)
    rows = init_rows()
    work_dir = Path(args.work_dir)
    print(f'training {len(TRAINING_VARIANTS)} variants ({args.jobs} at a time, logs in '
          f'{work_dir}/*/train.log)', flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        run_dirs = list(pool.map(lambda item: train_variant(*item, args.iters, work_dir, cache),
                                 TRAINING_VARIANTS.items()))
    for name, run_dir in zip(TRAINING_VARIANTS, run_dirs):
        rows += training_rows(run_dir, name)
    table = pd.DataFrame(rows)
    atomic_write(args.out, lambda tmp: table.to_csv(tmp, index=False, float_format='%.4g'))

    init = table[table.part == 'init'].groupby(['backbone', 'variant'], sort=False).segments
    print('routing segments at initialisation (5 seeds):')
    print(init.agg(lambda s: ' '.join(map(str, s))).to_string())
    trained = table[table.part == 'training'].groupby('variant', sort=False)
    print(f'\nhypernetwork phase ({args.iters} updates): segments first -> last logged, '
          'router entropy (max log 4 = 1.386), largest expert share at the end')
    for name, part in trained:
        first, last = part.iloc[0], part.iloc[-1]
        print(f'  {name:55s} {first.segments:4d} -> {last.segments:4d}   entropy '
              f'{last.router_entropy:.3f}   largest share {last.largest_expert_share:.2f}')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
