"""All figures of the paper from finished runs and results files.

    python analysis/make_figures.py [WORK_DIR...] [--results FILE...] --out DIR
        [--metrics COLUMN...] [--x gmacs_per_generation] [--steps 20]
        [--scheduler-spacing leading|trailing|linspace] [--steps-offset 0]
        [--convention fvcore|with_attention]

Writes, for each ALTER work dir, ``DIR/<run>/expert_patterns`` (Fig. 4a) and
``DIR/<run>/routing`` (Fig. 4b); for all work dirs together
``DIR/training_dynamics`` (Fig. 5); and for the results files one
``DIR/pareto_<metric>`` per metric (default: every quality column whose name tells
its direction, e.g. fid_*, kid_*, attribute_accuracy, alignment_*). Each as PNG and PDF.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ''):  # run as a file: make the `analysis` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.common import (PathLike, add_convention_argument, file_stem,  # noqa: E402
                             read_experts, read_results, save_figure)
from analysis.expert_patterns import plot_expert_patterns  # noqa: E402
from analysis.pareto import plot_pareto, quality_metrics  # noqa: E402
from analysis.routing import add_schedule_arguments, plot_routing  # noqa: E402
from analysis.training_dynamics import load_runs, plot_training_dynamics, run_labels  # noqa: E402


def make_figures(work_dirs: Sequence[PathLike], results: Sequence[PathLike], out: PathLike,
                 metrics: Optional[Sequence[str]] = None, x: str = 'gmacs_per_generation',
                 steps: int = 20, spacing: str = 'leading', steps_offset: int = 0,
                 convention: str = 'fvcore') -> List[Path]:
    """Write every figure the inputs allow into ``out``; returns the files written."""
    if not work_dirs and not results:
        raise ValueError('nothing to plot: give ALTER work dirs and/or --results files')
    out = Path(out)
    written: List[Path] = []
    for label, work_dir in zip(run_labels(work_dirs), work_dirs):
        experts = read_experts(work_dir)
        run_out = out / file_stem(label)
        written += save_figure(plot_expert_patterns(experts, convention,
                                                    title=f'Expert layer patterns: {label}'),
                               run_out, 'expert_patterns')
        written += save_figure(plot_routing(experts, steps, spacing, steps_offset, convention,
                                            title=f'Timestep routing: {label}'),
                               run_out, 'routing')
    if work_dirs:
        runs, targets = load_runs(work_dirs)
        written += save_figure(plot_training_dynamics(runs, convention, targets), out,
                               'training_dynamics')
    if results:
        table = read_results(results)
        metrics = list(metrics or quality_metrics(table))
        if not metrics:
            raise ValueError(f'no quality metric column found in {list(map(str, results))}; '
                             f'name them with --metrics')
        for metric in metrics:
            written += save_figure(plot_pareto(table, metric, x=x), out,
                                   f'pareto_{file_stem(metric)}')
    return written


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='*', metavar='WORK_DIR', help='ALTER work dirs')
    parser.add_argument('--results', nargs='+', default=[], metavar='FILE',
                        help='results JSON or CSV files for the Pareto figures')
    parser.add_argument('--metrics', nargs='+', metavar='COLUMN',
                        help='metric columns of the Pareto figures (default: all quality columns)')
    parser.add_argument('--x', default='gmacs_per_generation',
                        help='compute column of the Pareto figures')
    parser.add_argument('--out', required=True, help='output folder')
    add_schedule_arguments(parser)
    add_convention_argument(parser)
    args = parser.parse_args(argv)
    written = make_figures(args.work_dirs, args.results, args.out, args.metrics, args.x,
                           args.steps, args.scheduler_spacing, args.steps_offset, args.convention)
    print('\n'.join(map(str, written)))
    return written


if __name__ == '__main__':
    main()
