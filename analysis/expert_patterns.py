"""Which units each expert keeps (paper Fig. 4a): an experts x units map.

    python analysis/expert_patterns.py WORK_DIR --out DIR [--convention fvcore|with_attention]

Writes ``expert_patterns.png`` and ``.pdf``. Units are grouped by UNet level
(down / mid / up); each expert is annotated with its MAC keep ratio under the
chosen convention (from the expert file's ``macs``; files without it get the
fraction of units kept, labelled as such) and its share of training timesteps.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ''):  # run as a file: make the `analysis` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis.common import (LEVELS, Experts, add_convention_argument, expert_colors,  # noqa: E402
                             read_experts, run_name, save_figure, unit_level)

SKIPPED_COLOR = (0.92, 0.92, 0.92)


def unit_block(name: str) -> str:
    """The UNet block of a unit (``down.1``, ``mid``, ``up.3``): finer separators in the map."""
    fields = name.split('.')
    return fields[0] if fields[0] == 'mid' else '.'.join(fields[:2])


def expert_annotations(experts: Experts, convention: str) -> List[str]:
    """Per expert: its MAC keep ratio (or units kept, without ``macs``) and timestep share."""
    usage = experts.usage()
    if experts.expert_keep_ratio:
        if convention not in experts.expert_keep_ratio:
            raise ValueError(f'the expert file has MAC keep ratios for '
                             f'{sorted(experts.expert_keep_ratio)}, not {convention!r}')
        keep = [f'p = {p:.2f}' for p in experts.expert_keep_ratio[convention]]
    else:
        keep = [f'{int(row.sum())}/{len(row)} units' for row in experts.masks]
    return [f'{k}   {100 * u:4.1f} % of t' for k, u in zip(keep, usage)]


def plot_expert_patterns(experts: Experts, convention: str = 'fvcore',
                         title: Optional[str] = None) -> Figure:
    """Experts (rows) x units (columns): kept units in the expert's colour, skipped ones grey."""
    order = sorted(range(len(experts.unit_names)),
                   key=lambda i: LEVELS.index(unit_level(experts.unit_names[i])))  # stable
    names = [experts.unit_names[i] for i in order]
    masks = experts.masks[:, order]
    num_experts, num_units = masks.shape
    colors = np.array(expert_colors(num_experts))[:, :3]
    image = np.where(masks[..., None] == 1, colors[:, None, :], np.array(SKIPPED_COLOR))

    fig = Figure(figsize=(max(8.0, 0.28 * num_units + 3.5), 2.6 + 0.42 * num_experts),
                 layout='constrained')
    ax = fig.add_subplot()
    ax.imshow(image, aspect='auto', interpolation='nearest')
    ax.set_xticks(range(num_units), names, rotation=90, fontsize=7, family='monospace')
    ax.set_yticks(range(num_experts), [f'expert {e}' for e in range(num_experts)])
    ax.set_xticks(np.arange(num_units + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(num_experts + 1) - 0.5, minor=True)
    ax.grid(which='minor', color='white', linewidth=1.0)
    ax.tick_params(which='minor', length=0)
    ax.set_xlabel('unit (pruning-space order)')

    levels = [unit_level(n) for n in names]
    blocks = [unit_block(n) for n in names]
    for i in range(1, num_units):
        if levels[i] != levels[i - 1]:
            ax.axvline(i - 0.5, color='black', linewidth=2.5)
        elif blocks[i] != blocks[i - 1]:
            ax.axvline(i - 0.5, color='0.35', linewidth=0.8)
    spans = [(lv, [i for i, x in enumerate(levels) if x == lv]) for lv in LEVELS if lv in levels]
    top = ax.secondary_xaxis('top')
    top.set_xticks([np.mean(idx) for _, idx in spans],
                   [f'{lv} ({len(idx)} units)' for lv, idx in spans], fontweight='bold')
    top.tick_params(length=0)

    header = 'MAC keep ratio' if experts.expert_keep_ratio else 'kept units'
    ax.annotate(f'{header}, share of t', (1.01, 1.0), xycoords='axes fraction', fontsize=8,
                fontweight='bold', va='bottom')
    for e, text in enumerate(expert_annotations(experts, convention)):
        ax.annotate(text, (1.01, e), xycoords=('axes fraction', 'data'), va='center',
                    fontsize=8, family='monospace')
    fig.legend(handles=[Patch(color=colors[0], label='kept (colour = expert)'),
                        Patch(color=SKIPPED_COLOR, label='skipped')],
               loc='outside lower right', ncols=2, fontsize=8, frameon=False)

    realised = experts.keep_ratio.get(convention)
    summary = f'mean keep ratio over t ({convention}) = {realised:.3f}' if realised is not None else ''
    if experts.target_keep_ratio is not None:
        summary += f', target {experts.target_keep_ratio:.2f}'
    fig.suptitle('\n'.join(filter(None, [title or 'Expert layer patterns', summary])))
    return fig


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', help='ALTER work dir (or its experts.json)')
    parser.add_argument('--out', required=True, help='output folder')
    add_convention_argument(parser)
    args = parser.parse_args(argv)
    experts = read_experts(args.work_dir)
    fig = plot_expert_patterns(experts, args.convention,
                               title=f'Expert layer patterns: {run_name(args.work_dir)}')
    written = save_figure(fig, args.out, 'expert_patterns')
    print('\n'.join(map(str, written)))
    return written


if __name__ == '__main__':
    main()
