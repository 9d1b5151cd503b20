"""The study's own figures from its committed tables (``tools/study.py``'s OUT folder).

    python analysis/study_figures.py docs/study --out docs/study/figures

Writes, as PNG and PDF:

* ``denoising_gap`` -- the per-timestep x0-space gap of each ablation method to the
  teacher (``denoising_gap.csv``): the mean over seeds, with the band between the
  seeds' lowest and highest curve;
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

LENGTH_METRICS = ('attribute_accuracy', 'paired_dense50/ssim', 'alignment_lit_minilm_effnet',
                  'fid_efficientnet_lite0')


def run_method(run: str) -> str:
    """Method of a study run name, e.g. ``alter-lowfreq_s1`` -> ``alter-lowfreq``."""
    return run.rsplit('_s', 1)[0]


def plot_denoising_gap(curves: pd.DataFrame, runs: Optional[Sequence[str]] = None) -> Figure:
    """Gap against timestep, one line per method (mean over its seeds' runs)."""
    if runs is not None:
        curves = curves[curves.run.isin(runs)]
    if curves.empty:
        raise ValueError('no denoising-gap curves to plot')
    curves = curves.assign(method=curves.run.map(run_method))
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
    """Each metric against training iterations for the methods of the ``length`` study."""
    runs = results[results.iters.notna() & (results.steps == 20) & (results.seed == 0)
                   & (results.sparsity == 0.35)]
    dense = results[(results.run == 'dense') & (results.steps == 20)]
    metrics = [m for m in metrics if m in results]
    fig = Figure(figsize=(4.2 * len(metrics), 4), layout='constrained')
    colors = colormaps['tab10'].colors
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        for i, (method, group) in enumerate(runs.groupby('method', sort=False)):
            if method.split('-')[0] not in ('ALTER', 'Static') or 'lowfreq' in method:
                continue
            group = group.sort_values('iters')
            errors = None
            if f'{metric}_ci_low' in group:
                errors = [group[metric] - group[f'{metric}_ci_low'],
                          group[f'{metric}_ci_high'] - group[metric]]
            ax.errorbar(group.iters, group[metric], yerr=errors, marker='o', capsize=3,
                        color=colors[i % 10], label=method)
        if len(dense) and metric in dense:
            ax.axhline(dense[metric].iloc[0], color='0.4', linestyle='--', label='dense-20')
        ax.set_xscale('log')
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
    if curves.exists():
        ablation = [r for r in pd.read_csv(curves).run.unique() if '_i' not in r and '_p' not in r]
        written += save_figure(plot_denoising_gap(pd.read_csv(curves), ablation), args.out,
                               'denoising_gap')
    results = study / 'results.csv'
    if results.exists():
        written += save_figure(plot_training_length(pd.read_csv(results)), args.out,
                               'training_length')
    print('\n'.join(map(str, written)))
    return written


if __name__ == '__main__':
    main()
