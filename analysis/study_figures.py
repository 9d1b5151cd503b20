"""The study's own figures from its committed tables (``tools/study.py``'s OUT folder).

    python analysis/study_figures.py docs/study --out docs/study/figures

Writes, as PNG and PDF:

* ``denoising_gap`` -- the per-timestep x0-space gap of each ablation method to the
  teacher (``denoising_gap.csv``, study ``ablation``): the mean over seeds, with the
  band between the seeds' lowest and highest curve;
* ``training_length`` -- quality against training iterations for ALTER and Static
  (``results.csv``, study ``length`` and the seed-0 ablation runs), 95 % intervals as
  bars, the dense teacher with as many steps as a horizontal line.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ''):  # run as a file: make the `analysis` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.common import PathLike, save_figure  # noqa: E402
from analysis.pareto import error_bars  # noqa: E402

LENGTH_METRICS = ('attribute_accuracy', 'paired_dense50/ssim', 'alignment_lit_minilm_effnet',
                  'fid_efficientnet_lite0')


def plot_denoising_gap(curves: pd.DataFrame, study: str = 'ablation') -> Figure:
    """Gap against timestep, one line per method of ``study`` (mean over its seeds)."""
    curves = curves[curves.study == study]
    if curves.empty:
        raise ValueError(f'no denoising-gap curves of the {study!r} runs to plot')
    fig = Figure(figsize=(8, 5), layout='constrained')
    ax = fig.add_subplot()
    colors = colormaps['tab10'].colors
    for i, (method, group) in enumerate(curves.groupby('method', sort=False)):
        by_t = group.groupby('timestep')['mean']
        mean, low, high = by_t.mean(), by_t.min(), by_t.max()
        seeds = group.run.nunique()
        ax.plot(mean.index, mean, color=colors[i % 10], label=f'{method} ({seeds} seeds)')
        if seeds > 1:
            ax.fill_between(mean.index, low, high, color=colors[i % 10], alpha=0.15)
    ax.set_yscale('log')
    ax.set_xlabel('timestep t (1000 = pure noise)')
    ax.set_ylabel('MSE of x0 predictions, student vs teacher (lower is better)')
    ax.set_title('Per-timestep denoising gap to the dense teacher (band: range over seeds)')
    ax.grid(color='0.92')
    ax.legend(fontsize=8)
    return fig


def plot_training_length(results: pd.DataFrame,
                         metrics: Sequence[str] = LENGTH_METRICS) -> Figure:
    """Each metric against training iterations for ALTER and Static: the seed-0 runs of
    the ``length`` and ``ablation`` studies, sampled with the study's few steps."""
    runs = results[results.study.isin(['length', 'ablation']) & (results.seed == 0)]
    steps = runs.steps.mode().iloc[0] if len(runs) else None
    runs = runs[runs.steps == steps]
    dense = results[(results.run == 'dense') & (results.steps == steps)]
    metrics = [m for m in metrics if m in results]
    fig = Figure(figsize=(4.2 * len(metrics), 4), layout='constrained')
    colors = colormaps['tab10'].colors
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        for i, (method, group) in enumerate(runs.groupby('method', sort=False)):
            if method not in (f'ALTER-{steps}', f'Static-{steps}'):
                continue
            group = group.sort_values('iters')
            ax.errorbar(group.iters, group[metric], yerr=error_bars(group, metric), marker='o',
                        capsize=3, color=colors[i % 10], label=method)
        if len(dense) and metric in dense:
            ax.axhline(dense[metric].iloc[0], color='0.4', linestyle='--', label=f'dense-{steps}')
        ax.set_xscale('log')
        lengths = sorted(runs.iters.unique())  # the lengths trained, not log-axis decades
        ax.set_xticks(lengths, [f'{n:,.0f}' for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel('training iterations')
        ax.set_title(metric, fontsize=9)
        ax.grid(color='0.92')
        if j == 0:
            ax.legend(fontsize=8)
    return fig


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('study', help="the study's output folder (results.csv, denoising_gap.csv)")
    parser.add_argument('--out', required=True, help='output folder')
    args = parser.parse_args(argv)
    study: PathLike = Path(args.study)
    written: List[Path] = []
    curves = study / 'denoising_gap.csv'
    if curves.exists() and (pd.read_csv(curves).study == 'ablation').any():
        written += save_figure(plot_denoising_gap(pd.read_csv(curves)), args.out, 'denoising_gap')
    results = study / 'results.csv'
    if results.exists() and pd.read_csv(results).study.isin(['ablation', 'length']).any():
        written += save_figure(plot_training_length(pd.read_csv(results)), args.out,
                               'training_length')
    print('\n'.join(map(str, written)))
    return written


if __name__ == '__main__':
    main()
