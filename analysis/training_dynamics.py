"""Training dynamics of ALTER runs from their scalar logs (paper Fig. 5).

    python analysis/training_dynamics.py WORK_DIR... --out DIR [--convention fvcore|with_attention]

Writes ``training_dynamics.png`` and ``.pdf``: UNet loss L_U and its terms, the
hypernetwork loss L_H and L_perf, the weighted budget (ratio) and balance terms,
the keep ratio of the hard table beside that of the hypernetwork's sampled
masks, the routing table's contiguous segments and the router's entropy, against
iteration; the colour tells the run, the line style the quantity.
Each run's T_end (last logged iteration with hypernetwork updates) is a vertical
line; hyper/* values logged after it are stale repeats and are not drawn.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a file: make the `analysis` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from analysis.common import (EXPERTS_FILE, PathLike, add_convention_argument,  # noqa: E402
                             read_experts, read_scalars, run_name, save_figure)

HYPER_PREFIX = 'hyper/'
REALISED_KEEP = 'keep_ratio_{}'  # the hard table's keep ratio per MAC convention


def panels(convention: str) -> List[tuple]:
    """(title, y label, [(column, line style, legend text)]) of each panel."""
    return [
        ('UNet update', 'loss', [('unet/loss', '-', 'L_U (total)'),
                                 ('unet/loss_denoise', '--', 'denoise'),
                                 ('unet/loss_out_kd', ':', 'output KD'),
                                 ('unet/loss_feat_kd', '-.', 'feature KD')]),
        ('hypernetwork update', 'loss', [('hyper/loss', '-', 'L_H (total)'),
                                         ('hyper/loss_perf', '--', 'L_perf')]),
        ('budget and balance terms of L_H', 'weighted loss',
         [('hyper/loss_ratio', '-', 'ratio (sparsity) term'),
          ('hyper/loss_balance', '--', 'balance term')]),
        (f'keep ratio ({convention} MACs)', 'keep ratio p',
         [(REALISED_KEEP.format(convention), '-', 'realised: hard table'),
          ('hyper/keep_ratio_sampled', '--', 'sampled masks (hypernetwork step)')]),
        ('routing table (N_E = every expert one interval)', 'contiguous segments',
         [('routing_segments', '-', 'segments over the 1000 timesteps')]),
        ('router', 'entropy (nats)', [('hyper/router_entropy', '-',
                                       'mean entropy of the route probabilities')]),
    ]


def drop_stale_hyper(scalars: pd.DataFrame) -> pd.DataFrame:
    """A copy with hyper/* set to NaN on rows logged after T_end.

    mmengine logs the last value of a key it no longer receives, so after T_end
    the hyper/* columns repeat stale numbers; ``hypernet_active`` (1 while the
    hypernetwork trains, then 0) says which rows those are. A row missing the flag
    takes the previous row's, as the phase only ever switches once.
    """
    scalars = scalars.copy()
    if 'hypernet_active' in scalars:
        stale = scalars['hypernet_active'].ffill().eq(0)
        hyper = [c for c in scalars.columns if c.startswith(HYPER_PREFIX)]
        scalars.loc[stale, hyper] = float('nan')
    return scalars


def hypernet_end(scalars: pd.DataFrame) -> Optional[int]:
    """T_end as logged: the last iteration with hypernetwork updates before the first row
    without; None while the hypernetwork still trains (or the log does not say)."""
    if 'hypernet_active' not in scalars:
        return None
    phase = scalars['hypernet_active'].ffill()
    if not phase.eq(0).any():
        return None
    first_off = scalars['iter'][phase.eq(0)].min()
    active = scalars['iter'][(phase > 0) & (scalars['iter'] < first_off)]
    return int(active.max()) if len(active) else None


def run_labels(work_dirs: Sequence[PathLike]) -> List[str]:
    """Work dir names, or full paths when two runs share a name."""
    names = [run_name(d) for d in work_dirs]
    return names if len(set(names)) == len(names) else [str(Path(d).resolve()) for d in work_dirs]


def plot_training_dynamics(runs: Dict[str, pd.DataFrame], convention: str = 'fvcore',
                           targets: Optional[Dict[str, float]] = None) -> Figure:
    """The four panels of Fig. 5, and the routing table's segments and the router's
    entropy, with one colour per run.

    Args:
        runs: run label -> its scalar log (``read_scalars``), stale hyper/* rows included.
        targets: run label -> target keep ratio p, drawn as a dotted line.
    """
    layout = panels(convention)
    plotted = {c for _, _, lines in layout for c, _, _ in lines}
    for label, scalars in runs.items():
        if not plotted & set(scalars.columns):
            raise ValueError(f'the scalar log of {label} has none of {sorted(plotted)}; '
                             f'is it an ALTER run?')
    colors = colormaps['tab10'].colors
    fig = Figure(figsize=(13, 12), layout='constrained')
    axes = fig.subplots(3, 2, sharex=True).ravel()
    run_handles = []
    for i, (label, scalars) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        scalars = drop_stale_hyper(scalars)
        t_end = hypernet_end(scalars)
        phase = f'T_end = {t_end}' if t_end is not None else 'no T_end in the log'
        run_handles.append(Line2D([], [], color=color, label=f'{label} ({phase})'))
        for ax, (_, _, lines) in zip(axes, layout):
            for column, style, _ in lines:
                if column in scalars and scalars[column].notna().any():
                    valid = scalars[['iter', column]].dropna()
                    ax.plot(valid['iter'], valid[column], style, color=color, linewidth=1.4)
            if t_end is not None:
                ax.axvline(t_end, color=color, linestyle=(0, (1, 3)), linewidth=1.5)
                ax.annotate('T_end', (t_end, 1.0), xycoords=('data', 'axes fraction'),
                            xytext=(3, -12), textcoords='offset points', color=color, fontsize=8)
        if targets and label in targets:
            axes[3].axhline(targets[label], color=color, linestyle=':', linewidth=1)

    for ax, (panel_title, ylabel, lines) in zip(axes, layout):
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(color='0.92')
        handles = [Line2D([], [], color='0.3', linestyle=s, label=t) for _, s, t in lines]
        if ax is axes[3] and targets:
            handles.append(Line2D([], [], color='0.3', linestyle=':', linewidth=1, label='target p'))
        ax.legend(handles=handles, fontsize=8, loc='best')
    for ax in axes[-2:]:
        ax.set_xlabel('iteration')
    fig.legend(handles=run_handles, loc='outside lower center', ncols=min(len(runs), 4),
               fontsize=9, title='run', title_fontsize=9, frameon=False)
    fig.suptitle('Training dynamics (dotted vertical line: T_end, the hypernetwork stops)')
    return fig


def load_runs(work_dirs: Sequence[PathLike]) -> Tuple[Dict[str, pd.DataFrame], Dict[str, float]]:
    """(label -> scalar log, label -> target keep ratio of runs whose expert file stores one)."""
    labels = run_labels(work_dirs)
    runs = {label: read_scalars(d) for label, d in zip(labels, work_dirs)}
    targets = {}
    for label, d in zip(labels, work_dirs):
        if (Path(d) / EXPERTS_FILE).is_file():
            target = read_experts(d).target_keep_ratio
            if target is not None:
                targets[label] = target
    return runs, targets


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='+', metavar='WORK_DIR', help='ALTER work dirs to overlay')
    parser.add_argument('--out', required=True, help='output folder')
    add_convention_argument(parser)
    args = parser.parse_args(argv)
    runs, targets = load_runs(args.work_dirs)
    fig = plot_training_dynamics(runs, args.convention, targets)
    written = save_figure(fig, args.out, 'training_dynamics')
    print('\n'.join(map(str, written)))
    return written


if __name__ == '__main__':
    main()
