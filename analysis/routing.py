"""Timestep -> expert routing (paper Fig. 4b), over all training timesteps and a sampler's steps.

    python analysis/routing.py WORK_DIR --out DIR [--steps 20]
        [--scheduler-spacing leading|trailing|linspace] [--steps-offset 0]
        [--convention fvcore|with_attention]

Writes ``routing.png`` and ``.pdf``: top, the routing table over timesteps 0..T-1;
bottom, the experts a DDIM-style schedule of ``--steps`` steps visits (timesteps
computed by ``schedule_timesteps``, as diffusers' ``set_timesteps`` does for that
``timestep_spacing``), with the schedule's MAC keep ratio when the expert file has ``macs``.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a file: make the `analysis` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.common import (Experts, add_convention_argument, expert_colors,  # noqa: E402
                             read_experts, run_name, save_figure)

SPACINGS = ('leading', 'trailing', 'linspace')
MAX_LABELLED_STEPS = 30  # beyond this, step numbers above the markers overlap


def schedule_timesteps(steps: int, spacing: str = 'leading', num_train_timesteps: int = 1000,
                       steps_offset: int = 0) -> np.ndarray:
    """(steps,) int timesteps of a DDIM-style schedule, in sampling order (largest first).

    As diffusers' ``DDIMScheduler.set_timesteps`` with ``timestep_spacing``:

    * ``leading``: ``arange(steps) * (T // steps)``, reversed, plus ``steps_offset``
      (SD2.1's scheduler config sets ``steps_offset=1``);
    * ``trailing``: ``round(arange(T, 0, -T / steps)) - 1``, so the first step is ``T - 1``;
    * ``linspace``: ``round(linspace(0, T - 1, steps))``, reversed.

    diffusers applies ``steps_offset`` to ``leading`` only, so it is refused for the others.
    """
    if spacing not in SPACINGS:
        raise ValueError(f'unknown scheduler spacing {spacing!r}; choose one of {SPACINGS}')
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f'steps must be in 1..{num_train_timesteps}, got {steps}')
    if steps_offset and spacing != 'leading':
        raise ValueError(f'steps_offset applies to leading spacing only, not {spacing!r}')
    T = num_train_timesteps
    if spacing == 'leading':
        timesteps = np.arange(steps)[::-1] * (T // steps) + steps_offset
    elif spacing == 'trailing':
        timesteps = np.round(np.arange(T, 0, -T / steps)) - 1
    else:
        timesteps = np.round(np.linspace(0, T - 1, steps))[::-1]
    return timesteps.astype(np.int64)


def experts_at(routing_table: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """The expert of each (possibly non-integer) timestep: rounded and clamped, as the sampler."""
    index = np.clip(np.round(timesteps).astype(int), 0, len(routing_table) - 1)
    return routing_table[index]


def routing_runs(routing_table: np.ndarray) -> List[Tuple[int, int, int]]:
    """Maximal runs of consecutive timesteps with one expert: (expert, first t, length)."""
    starts = np.flatnonzero(np.diff(routing_table, prepend=-1))
    lengths = np.diff(np.append(starts, len(routing_table)))
    return [(int(routing_table[s]), int(s), int(n)) for s, n in zip(starts, lengths)]


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """``--steps``, ``--scheduler-spacing`` and ``--steps-offset`` of the sampler's schedule."""
    parser.add_argument('--steps', type=int, default=20, help='sampling steps of the schedule')
    parser.add_argument('--scheduler-spacing', default='leading', choices=SPACINGS,
                        help="diffusers' timestep_spacing (DDIM default: leading)")
    parser.add_argument('--steps-offset', type=int, default=0,
                        help='added to leading timesteps (SD2.1 configs use 1)')


def plot_routing(experts: Experts, steps: int = 20, spacing: str = 'leading',
                 steps_offset: int = 0, convention: str = 'fvcore',
                 title: Optional[str] = None) -> Figure:
    """Top: the routing table over all training timesteps; bottom: a sampler's steps."""
    route = experts.routing_table
    num_experts, T = experts.num_experts, len(route)
    colors = expert_colors(num_experts)
    timesteps = schedule_timesteps(steps, spacing, T, steps_offset)
    visited = experts_at(route, timesteps)

    fig = Figure(figsize=(11, 2.6 + 0.55 * num_experts), layout='constrained')
    table_ax, steps_ax = fig.subplots(2, 1, sharex=True)
    for expert, start, length in routing_runs(route):
        table_ax.broken_barh([(start - 0.5, length)], (expert - 0.35, 0.7), color=colors[expert])
    table_ax.set_title(f'routing table: all {T} training timesteps', fontsize=10)

    steps_ax.vlines(timesteps, -0.5, visited, color='0.8', linewidth=0.8, zorder=1)
    steps_ax.scatter(timesteps, visited, c=[colors[e] for e in visited], s=36,
                     edgecolors='black', linewidths=0.5, zorder=2)
    if steps <= MAX_LABELLED_STEPS:
        for i, (t, e) in enumerate(zip(timesteps, visited), 1):
            steps_ax.annotate(str(i), (t, e), xytext=(0, 6), textcoords='offset points',
                              ha='center', fontsize=6)
    counts = np.bincount(visited, minlength=num_experts)
    schedule_title = (f'{steps}-step schedule, {spacing} spacing'
                      + (f', offset {steps_offset}' if steps_offset else '')
                      + ' (numbers: step order)')
    keep = experts.expert_keep_ratio.get(convention)
    if keep is not None:
        schedule_title += (f'; keep ratio ({convention}) of this schedule {keep[visited].mean():.3f}'
                           f' vs {keep[route].mean():.3f} over all t')
    steps_ax.set_title(schedule_title, fontsize=10)
    steps_ax.set_xlabel('timestep t (sampling runs from high t to low t)')

    usage = experts.usage()
    for ax, labels in ((table_ax, [f'expert {e} ({100 * u:.0f} % of t)' for e, u in enumerate(usage)]),
                       (steps_ax, [f'expert {e} ({n} steps)' for e, n in enumerate(counts)])):
        ax.set_yticks(range(num_experts), labels, fontsize=8)
        ax.set_ylim(num_experts - 0.5, -0.5)  # expert 0 on top, as in the expert map
        ax.set_xlim(-0.01 * T, 1.01 * T)  # margin: markers at t = 0 and T - 1 stay whole
        ax.grid(axis='x', color='0.9')
        ax.set_axisbelow(True)
    fig.suptitle(title or 'Timestep routing')
    return fig


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', help='ALTER work dir (or its experts.json)')
    parser.add_argument('--out', required=True, help='output folder')
    add_schedule_arguments(parser)
    add_convention_argument(parser)
    args = parser.parse_args(argv)
    experts = read_experts(args.work_dir)
    fig = plot_routing(experts, args.steps, args.scheduler_spacing, args.steps_offset,
                       args.convention, title=f'Timestep routing: {run_name(args.work_dir)}')
    written = save_figure(fig, args.out, 'routing')
    print('\n'.join(map(str, written)))
    return written


if __name__ == '__main__':
    main()
