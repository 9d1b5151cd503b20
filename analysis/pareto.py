"""Quality vs compute Pareto curves for any metric column of results tables.

    python analysis/pareto.py RESULTS... --metric COLUMN --out DIR
        [--x gmacs_per_generation] [--higher-is-better | --lower-is-better]

RESULTS are results JSON (``{"rows": [...]}``, as tools/demo.py writes) or CSV
files with the same columns; every row is one point (rows repeating a point already
there, such as the dense baselines of several demo runs, are drawn once). Points are grouped into
series by method family (the ``method`` name without its ``-<steps>`` suffix,
plus ``variant`` where given); each series' own frontier is a line, and the
frontier over all points is the grey staircase with ringed points; bars are the 95 %
intervals of ``<metric>_ci_low``/``_ci_high`` columns (else ``<metric>_std``). Whether higher
is better is read from the metric's name (fid/kid/cmmd/lpips: lower;
accuracy/alignment/clip: higher) unless a flag says so. Writes
``pareto_<metric>.png`` and ``.pdf``.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a file: make the `analysis` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.common import file_stem, read_results, save_figure  # noqa: E402

LOWER_IS_BETTER = ('fid', 'kid', 'cmmd', 'lpips')
HIGHER_IS_BETTER = ('accuracy', 'alignment', 'clip')
AXIS_LABELS = {
    'gmacs_per_generation': 'GMACs per generation (fvcore convention: attention matmuls not counted)',
    'gmacs_per_generation_with_attention': 'GMACs per generation (attention matmuls counted)',
    'seconds_per_generation': 'seconds per generation',
}
MARKERS = 'osD^vP*X'
LABEL_OFFSETS = ((6, 4), (6, -12), (6, 14), (6, -22), (6, 24), (6, -32))  # points


def metric_higher_is_better(metric: str) -> bool:
    """Direction of a metric from the words of its name; raises when the name does not tell."""
    words = set(re.split(r'[^a-z0-9]+', metric.lower()))
    lower, higher = words & set(LOWER_IS_BETTER), words & set(HIGHER_IS_BETTER)
    if bool(lower) == bool(higher):
        raise ValueError(f'cannot tell from the name {metric!r} whether higher is better (lower: '
                         f'{LOWER_IS_BETTER}, higher: {HIGHER_IS_BETTER}); pass '
                         f'--higher-is-better or --lower-is-better')
    return bool(higher)


def quality_metrics(results: pd.DataFrame) -> List[str]:
    """Numeric metric columns with a direction told by their name, leaving out ``*_std``
    spreads, ``*_ci_low``/``*_ci_high`` interval bounds and ``a/b`` breakdowns."""
    return [c for c in results.columns
            if pd.api.types.is_numeric_dtype(results[c]) and '/' not in c
            and not c.endswith(('_std', '_ci_low', '_ci_high'))
            and set(re.split(r'[^a-z0-9]+', c.lower())) & set(LOWER_IS_BETTER + HIGHER_IS_BETTER)]


def pareto_front(cost: Sequence[float], quality: Sequence[float], higher_is_better: bool) -> np.ndarray:
    """(N,) bool: the points no other point dominates (cost no higher, quality no worse, one strictly).

    Cost is always minimised; quality is maximised if ``higher_is_better`` else minimised.
    """
    cost = np.asarray(cost, dtype=float)
    quality = np.asarray(quality, dtype=float) * (1 if higher_is_better else -1)
    if np.isnan(cost).any() or np.isnan(quality).any():
        raise ValueError('pareto_front needs finite values; drop rows missing the metric first')
    no_worse = (cost[None, :] <= cost[:, None]) & (quality[None, :] >= quality[:, None])
    better = (cost[None, :] < cost[:, None]) | (quality[None, :] > quality[:, None])
    return ~(no_worse & better).any(axis=1)  # row i: is some point j no worse and better?


def method_family(row: pd.Series) -> str:
    """Series of a point: ``method`` without its ``-<steps>`` suffix, plus ``variant`` if given."""
    method = str(row['method'])
    steps = row.get('steps')
    if pd.notna(steps) and method.endswith(f'-{int(steps)}'):
        method = method[:-len(f'-{int(steps)}')]
    variant = row.get('variant')
    return f'{method} ({variant})' if pd.notna(variant) else method


def point_label(row: pd.Series) -> str:
    """Text next to a point: the method name and the setting columns that vary between runs."""
    parts = [str(row['method'])]
    if pd.notna(row.get('sparsity')):
        parts.append(f's={row["sparsity"]:g}')
    elif pd.notna(row.get('keep_ratio')) and row['keep_ratio'] < 1:
        parts.append(f'p={row["keep_ratio"]:.2f}')
    if pd.notna(row.get('num_experts')):
        parts.append(f'{int(row["num_experts"])} experts')
    if pd.notna(row.get('seed')):
        parts.append(f'seed {int(row["seed"])}')
    return ' '.join(parts)


def place_labels(ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                 fontsize: float = 7) -> None:
    """Label points left to right, moving a label below or above its point when it would
    overlap a label placed before (points of equal cost, e.g. dense-20 and ALTER-20, crowd)."""
    scale = ax.figure.dpi / 72  # points -> pixels
    placed: List[Tuple[float, float, float, float]] = []
    for x, y, text in sorted(zip(xs, ys, labels)):
        px, py = ax.transData.transform((x, y))
        width, height = 0.6 * fontsize * len(text) * scale, 1.2 * fontsize * scale
        for dx, dy in LABEL_OFFSETS:
            box = (px + dx * scale, py + dy * scale, px + dx * scale + width, py + dy * scale + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in placed):
                break
        placed.append(box)  # the last offset if all overlap: crowded, but still readable
        moved = (dx, dy) != LABEL_OFFSETS[0]  # a leader line says whose label it is
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords='offset points', fontsize=fontsize,
                    arrowprops=dict(arrowstyle='-', color='0.6', linewidth=0.5) if moved else None)


def error_bars(points: pd.DataFrame, metric: str) -> Optional[np.ndarray]:
    """(2, N) distances below and above each point: its 95 % interval where the table
    has ``<metric>_ci_low``/``_ci_high``, else one ``<metric>_std`` either way, else None."""
    if f'{metric}_ci_low' in points and f'{metric}_ci_high' in points:
        return np.stack([points[metric] - points[f'{metric}_ci_low'],
                         points[f'{metric}_ci_high'] - points[metric]]).clip(min=0)
    if f'{metric}_std' in points:
        return np.stack([points[f'{metric}_std']] * 2)
    return None


def plot_pareto(results: pd.DataFrame, metric: str, higher_is_better: Optional[bool] = None,
                x: str = 'gmacs_per_generation') -> Figure:
    """``metric`` against ``x`` for every row of ``results``, frontiers marked."""
    for column in ('method', x, metric):
        if column not in results:
            raise ValueError(f'results have no column {column!r}; columns: {sorted(results.columns)}')
    if higher_is_better is None:
        higher_is_better = metric_higher_is_better(metric)
    # Identical points (e.g. the dense baselines each demo results file repeats) are drawn once.
    points = (results.dropna(subset=[x, metric])
              .drop_duplicates(subset=[c for c in ('method', 'steps', x, metric) if c in results])
              .reset_index(drop=True))
    if points.empty:
        raise ValueError(f'no results row has both {x!r} and {metric!r}')
    points['family'] = points.apply(method_family, axis=1)
    front = pareto_front(points[x], points[metric], higher_is_better)
    errors = error_bars(points, metric)

    fig = Figure(figsize=(8, 5.5), layout='constrained')
    ax = fig.add_subplot()
    best = points[front].sort_values(x)
    ax.step(best[x], best[metric], where='post', color='0.75', linewidth=6, alpha=0.6,
            solid_capstyle='round', zorder=1, label='Pareto frontier (all points)')
    ax.scatter(best[x], best[metric], s=190, facecolors='none', edgecolors='black',
               linewidths=1.2, zorder=4)
    colors = colormaps['tab10'].colors
    for i, (family, group) in enumerate(points.groupby('family', sort=False)):
        color, marker = colors[i % len(colors)], MARKERS[i % len(MARKERS)]
        own = group[pareto_front(group[x], group[metric], higher_is_better)].sort_values(x)
        ax.plot(own[x], own[metric], color=color, linewidth=1.5, zorder=2)
        ax.scatter(group[x], group[metric], color=color, marker=marker, s=60, zorder=3,
                   edgecolors='black', linewidths=0.4, label=family)
        if errors is not None:
            ax.errorbar(group[x], group[metric], yerr=errors[:, group.index], fmt='none',
                        ecolor=color, elinewidth=1, capsize=3, zorder=2)
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(f'{metric} ({"higher" if higher_is_better else "lower"} is better)')
    ax.grid(color='0.92')
    ax.set_axisbelow(True)
    ax.margins(x=0.12, y=0.12)  # room for the labels right of the points
    ax.legend(fontsize=8, loc='best')
    ax.set_title(f'{metric} vs compute ({len(points)} points)')
    fig.draw_without_rendering()  # final axes limits and layout, so label placement sees pixels
    place_labels(ax, points[x], points[metric], points.apply(point_label, axis=1))
    return fig


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('results', nargs='+', help='results JSON or CSV files')
    parser.add_argument('--metric', required=True, help='quality column, e.g. fid_efficientnet_lite0')
    parser.add_argument('--x', default='gmacs_per_generation', help='compute column (minimised)')
    parser.add_argument('--out', required=True, help='output folder')
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument('--higher-is-better', dest='higher_is_better', action='store_const',
                           const=True, help='override the direction read from the name')
    direction.add_argument('--lower-is-better', dest='higher_is_better', action='store_const',
                           const=False)
    args = parser.parse_args(argv)
    fig = plot_pareto(read_results(args.results), args.metric, args.higher_is_better, args.x)
    written = save_figure(fig, args.out, f'pareto_{file_stem(args.metric)}')
    print('\n'.join(map(str, written)))
    return written


if __name__ == '__main__':
    main()
