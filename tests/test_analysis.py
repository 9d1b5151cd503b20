"""The analysis scripts on synthetic runs: data functions against hand-made cases, and every
script end to end into PNG + PDF (files only: the scripts import neither alter nor torch)."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use('Agg')

from analysis import (expert_patterns, make_figures, pareto, routing, study_figures,  # noqa: E402
                      training_dynamics)
from analysis.common import read_experts, read_results, read_scalars  # noqa: E402
from analysis.pareto import metric_higher_is_better, pareto_front  # noqa: E402
from analysis.routing import experts_at, routing_runs, schedule_timesteps  # noqa: E402
from analysis.training_dynamics import drop_stale_hyper, hypernet_end  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# The SD2.1 'paper' pruning space: 34 units over down / mid / up (as in a real experts.json).
UNIT_NAMES = ['down.0.res.0', 'down.0.attn.0', 'down.0.res.1', 'down.0.attn.1', 'down.1.attn.0',
              'down.1.res.1', 'down.1.attn.1', 'down.2.attn.0', 'down.2.res.1', 'down.2.attn.1',
              'down.3.res.0', 'down.3.res.1', 'mid.res.0', 'mid.attn.0', 'mid.res.1',
              'up.0.res.0', 'up.0.res.1', 'up.0.res.2', 'up.1.res.0', 'up.1.attn.0',
              'up.1.res.1', 'up.1.attn.1', 'up.1.res.2', 'up.1.attn.2', 'up.2.attn.0',
              'up.2.res.1', 'up.2.attn.1', 'up.2.res.2', 'up.2.attn.2', 'up.3.attn.0',
              'up.3.res.1', 'up.3.attn.1', 'up.3.res.2', 'up.3.attn.2']
NUM_EXPERTS = 4
T_END = 75
HYPER_KEYS = ['hyper/loss', 'hyper/loss_perf', 'hyper/loss_ratio', 'hyper/loss_balance',
              'hyper/keep_ratio_sampled', 'hyper/router_entropy']


def write_experts(work_dir: Path, with_macs: bool = True) -> dict:
    """An experts.json as ExpertExportHook writes it (``macs`` absent in older files)."""
    rng = np.random.default_rng(0)
    masks = (rng.random((NUM_EXPERTS, len(UNIT_NAMES))) < 0.6).astype(int)
    # Experts own contiguous timestep intervals, the last one split in two runs.
    route = np.repeat([3, 2, 1, 0, 3], [150, 250, 300, 200, 100])
    data = dict(space='paper', unit_names=UNIT_NAMES, num_experts=NUM_EXPERTS,
                expert_masks=masks.tolist(), routing_table=route.tolist(),
                keep_ratio=dict(fvcore=0.66, with_attention=0.61), target_keep_ratio=0.65,
                architecture={}, step=150)
    if with_macs:
        data['macs'] = {c: dict(total_per_call=1e9, expert_keep_ratio=[0.55, 0.6, 0.7, 0.75])
                        for c in ('fvcore', 'with_attention')}
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / 'experts.json').write_text(json.dumps(data))
    return data


def scalar_rows(iters, unet_loss: float = 1.5) -> List[dict]:
    """mmengine scalar rows: hypernetwork rows while iter <= T_END, then stale hyper/* repeats."""
    rows, last_hyper = [], {}
    for it in iters:
        active = it <= T_END
        if active:  # L_H falls as the budget term is met; sampled keep ratio settles near p
            last_hyper = {'hyper/loss': 1.5 + 30 / it, 'hyper/loss_perf': 1.4 - it / 1000,
                          'hyper/loss_ratio': 25 / it, 'hyper/loss_balance': 1 + 5 / it,
                          'hyper/keep_ratio_sampled': 0.65 + 1.5 / it, 'hyper/router_entropy': 0.5}
        row = {'iter': it, 'step': it, 'unet/loss': unet_loss - it / 1000,
               'unet/loss_denoise': 1.0, 'unet/loss_out_kd': 0.2, 'unet/loss_feat_kd': 0.1,
               'hypernet_active': float(active), 'keep_ratio_fvcore': 0.6 + it / 1000,
               'keep_ratio_with_attention': 0.55, **last_hyper,
               **{f'usage_expert{i}': 0.25 for i in range(NUM_EXPERTS)}}
        if it % 10 == 0:  # not every row carries every key
            row.update({'unet.lr': 1e-4, 'hypernet.lr': 7e-5})
        rows.append(row)
    return rows


def write_scalars(work_dir: Path, timestamp: str, rows: List[dict]) -> None:
    vis = work_dir / timestamp / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in rows))


def make_work_dir(path: Path, with_macs: bool = True) -> Path:
    """An ALTER work dir of 30 logged iterations (5..150), T_end = 75."""
    write_experts(path, with_macs)
    write_scalars(path, '20260101_120000', scalar_rows(range(5, 151, 5)))
    return path


def write_results(tmp_path: Path) -> Dict[str, Path]:
    """A demo results JSON (dense-50, dense-20, ALTER-20) and a sweep CSV with extra columns."""
    def row(method: str, steps: int, keep: float, fid: float, acc: float, **extra) -> dict:
        return dict(method=method, steps=steps, keep_ratio=keep, gmacs_per_generation=0.5 * steps * keep,
                    seconds_per_generation=0.04 * steps * keep,
                    fid_efficientnet_lite0=fid, kid_efficientnet_lite0=fid / 500,
                    kid_efficientnet_lite0_std=0.01, attribute_accuracy=acc,
                    **{'attribute_accuracy/colour': acc}, **extra)
    demo = tmp_path / 'results.json'
    demo.write_text(json.dumps({'rows': [row('dense-50', 50, 1.0, 30.0, 0.9),
                                         row('dense-20', 20, 1.0, 33.0, 0.85),
                                         row('ALTER-20', 20, 0.65, 32.0, 0.86)],
                                'settings': {'seed': 0}}))
    sweep = tmp_path / 'sweep.csv'
    pd.DataFrame([row(f'ALTER-{n}', n, 1 - s, 31.0 + 20 * s - n / 10, 0.9 - s / 5, sparsity=s,
                      num_experts=4, seed=0, variant='joint')
                  for s in (0.35, 0.5) for n in (15, 25)]).to_csv(sweep, index=False)
    return dict(json=demo, csv=sweep)


def assert_figures(out: Path, stem: str) -> None:
    for suffix, min_bytes in (('png', 20_000), ('pdf', 5_000)):
        path = out / f'{stem}.{suffix}'
        assert path.is_file() and path.stat().st_size > min_bytes, path
    assert not [p for p in out.iterdir() if p.name.startswith('.')], 'temp files left behind'


# --- data functions ------------------------------------------------------------------------

def test_schedule_timesteps_of_ddim_spacings():
    # diffusers DDIMScheduler(num_train_timesteps=1000).set_timesteps(10) for each spacing
    np.testing.assert_array_equal(schedule_timesteps(10, 'leading'), np.arange(900, -1, -100))
    np.testing.assert_array_equal(schedule_timesteps(10, 'leading', steps_offset=1),
                                  np.arange(901, 0, -100))
    np.testing.assert_array_equal(schedule_timesteps(10, 'trailing'), np.arange(999, 98, -100))
    np.testing.assert_array_equal(schedule_timesteps(10, 'linspace'), np.arange(999, -1, -111))
    leading_20 = schedule_timesteps(20, 'leading')
    assert leading_20[0] == 950 and leading_20[-1] == 0 and len(leading_20) == 20
    with pytest.raises(ValueError, match='spacing'):
        schedule_timesteps(10, 'karras')
    with pytest.raises(ValueError, match='leading spacing only'):
        schedule_timesteps(10, 'trailing', steps_offset=1)


def test_routing_lookup_and_runs(tmp_path):
    write_experts(tmp_path)
    experts = read_experts(tmp_path)
    np.testing.assert_array_equal(experts_at(experts.routing_table, np.array([0, 149.4, 149.6, 1e4])),
                                  [3, 3, 2, 3])  # rounded, then clamped to the table
    assert routing_runs(experts.routing_table) == [(3, 0, 150), (2, 150, 250), (1, 400, 300),
                                                   (0, 700, 200), (3, 900, 100)]
    np.testing.assert_allclose(experts.usage(), [0.2, 0.3, 0.25, 0.25])


def test_read_experts_checks_shapes(tmp_path):
    data = write_experts(tmp_path)
    experts = read_experts(tmp_path / 'experts.json')
    assert experts.masks.shape == (NUM_EXPERTS, 34) and len(experts.routing_table) == 1000
    np.testing.assert_allclose(experts.expert_keep_ratio['fvcore'], [0.55, 0.6, 0.7, 0.75])
    data['expert_masks'][1] = data['expert_masks'][1][:-1]
    (tmp_path / 'experts.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match='N_E x N_L'):
        read_experts(tmp_path)
    with pytest.raises(FileNotFoundError, match='experts.json'):
        read_experts(tmp_path / 'missing')


def test_expert_annotations_use_macs_when_present(tmp_path):
    write_experts(tmp_path / 'new')
    write_experts(tmp_path / 'old', with_macs=False)
    with_macs, older = read_experts(tmp_path / 'new'), read_experts(tmp_path / 'old')
    assert expert_patterns.expert_annotations(with_macs, 'fvcore')[0].startswith('p = 0.55')
    kept = older.masks[0].sum()
    assert expert_patterns.expert_annotations(older, 'fvcore')[0].startswith(f'{kept}/34 units')


@pytest.mark.parametrize('higher, expected', [
    (False, [True, True, False, True, False, False]),
    (True, [True, False, False, False, False, False]),
])
def test_pareto_front_by_hand(higher, expected):
    cost = [1, 2, 3, 4, 2, 5]
    quality = [10, 8, 8, 5, 9, 5]
    # lower is better: (3, 8) loses to (2, 8) on cost, (2, 9) to (2, 8) on quality, (5, 5) to
    # (4, 5); higher is better: (1, 10) is cheapest and best, so it dominates all the others.
    np.testing.assert_array_equal(pareto_front(cost, quality, higher), expected)


def test_pareto_front_keeps_trade_offs_and_ties():
    np.testing.assert_array_equal(pareto_front([1, 2, 3], [1, 2, 3], True), [True] * 3)
    np.testing.assert_array_equal(pareto_front([1, 2, 3], [1, 2, 3], False), [True, False, False])
    np.testing.assert_array_equal(pareto_front([1, 1], [2, 2], True), [True, True])  # equal points
    with pytest.raises(ValueError, match='finite'):
        pareto_front([1, 2], [1, float('nan')], True)


def test_metric_direction_from_name():
    assert not metric_higher_is_better('fid_efficientnet_lite0')
    assert not metric_higher_is_better('kid_efficientnet_lite0')
    assert metric_higher_is_better('attribute_accuracy')
    assert metric_higher_is_better('alignment_lit_minilm_effnet')
    with pytest.raises(ValueError, match='--higher-is-better'):
        metric_higher_is_better('seconds_per_generation')


def test_read_results_json_and_csv(tmp_path):
    files = write_results(tmp_path)
    table = read_results([files['json'], files['csv']])
    assert len(table) == 7 and set(table['source']) == {'results', 'sweep'}
    assert table.loc[table['source'] == 'results', 'sparsity'].isna().all()
    assert pareto.quality_metrics(table) == ['fid_efficientnet_lite0', 'kid_efficientnet_lite0',
                                             'attribute_accuracy']
    with pytest.raises(ValueError, match='unknown results format'):
        read_results([tmp_path / 'results.txt'])


def test_read_scalars_concatenates_resumed_runs(tmp_path):
    # Run 1 logs 5..100 and dies; run 2 resumes from the iter-75 checkpoint and logs 80..150.
    write_scalars(tmp_path, '20260101_120000', scalar_rows(range(80, 151, 5), unet_loss=9.0))
    write_scalars(tmp_path, '20260101_090000', scalar_rows(range(5, 101, 5), unet_loss=1.5)
                  + [{'step': 100, 'val/fid': 3.0}])  # a validation row: not a training row
    scalars = read_scalars(tmp_path)
    assert scalars['iter'].tolist() == list(range(5, 151, 5))
    later_run_wins = np.where(scalars['iter'] >= 80, 9.0, 1.5) - scalars['iter'] / 1000
    np.testing.assert_allclose(scalars['unet/loss'], later_run_wins)
    assert 'val/fid' not in scalars or scalars['val/fid'].isna().all()
    assert scalars['unet.lr'].notna().sum() == 15  # iters divisible by 10 only


def test_stale_hyper_values_after_t_end_are_dropped(tmp_path):
    scalars = read_scalars(make_work_dir(tmp_path))
    scalars.loc[scalars['iter'] == 100, 'hypernet_active'] = np.nan  # a row without the flag
    assert hypernet_end(scalars) == T_END
    clean = drop_stale_hyper(scalars)
    after = clean['iter'] > T_END
    assert clean.loc[after, HYPER_KEYS].isna().all().all()
    pd.testing.assert_frame_equal(clean.loc[~after, HYPER_KEYS],
                                  scalars.loc[~after, HYPER_KEYS])
    pd.testing.assert_series_equal(clean['unet/loss'], scalars['unet/loss'])  # others untouched
    assert hypernet_end(scalars[scalars['iter'] <= T_END]) is None  # still training H


# --- scripts end to end --------------------------------------------------------------------

def test_expert_patterns_script(tmp_path):
    expert_patterns.main([str(make_work_dir(tmp_path / 'run')), '--out', str(tmp_path / 'out')])
    assert_figures(tmp_path / 'out', 'expert_patterns')


def test_routing_script(tmp_path):
    routing.main([str(make_work_dir(tmp_path / 'run')), '--out', str(tmp_path / 'out'),
                  '--steps', '25', '--scheduler-spacing', 'trailing'])
    assert_figures(tmp_path / 'out', 'routing')


def test_pareto_script(tmp_path):
    files = write_results(tmp_path)
    out = tmp_path / 'out'
    pareto.main([str(files['json']), str(files['csv']), '--metric', 'fid_efficientnet_lite0',
                 '--out', str(out)])
    pareto.main([str(files['json']), '--metric', 'attribute_accuracy/colour', '--out', str(out)])
    # the name does not tell the direction of seconds; the flag does
    pareto.main([str(files['csv']), '--metric', 'seconds_per_generation', '--x', 'keep_ratio',
                 '--lower-is-better', '--out', str(out)])
    assert_figures(out, 'pareto_fid_efficientnet_lite0')
    assert_figures(out, 'pareto_attribute_accuracy-colour')
    assert_figures(out, 'pareto_seconds_per_generation')
    with pytest.raises(ValueError, match='--higher-is-better'):
        pareto.main([str(files['csv']), '--metric', 'seconds_per_generation', '--out', str(out)])


def test_training_dynamics_script_overlays_runs(tmp_path):
    first = make_work_dir(tmp_path / 'e4_s35')
    second = tmp_path / 'e4_s50'  # resumed run, no expert file yet
    write_scalars(second, '20260102_000000', scalar_rows(range(5, 81, 5)))
    write_scalars(second, '20260102_010000', scalar_rows(range(60, 151, 5), unet_loss=1.2))
    training_dynamics.main([str(first), str(second), '--out', str(tmp_path / 'out')])
    assert_figures(tmp_path / 'out', 'training_dynamics')


def test_make_figures_writes_everything(tmp_path):
    runs = [make_work_dir(tmp_path / 'e4_s35'), make_work_dir(tmp_path / 'e4_s35_old', with_macs=False)]
    files = write_results(tmp_path)
    out = tmp_path / 'figures'
    written = make_figures.main([*map(str, runs), '--results', str(files['json']), str(files['csv']),
                                 '--out', str(out)])
    for run in ('e4_s35', 'e4_s35_old'):
        assert_figures(out / run, 'expert_patterns')
        assert_figures(out / run, 'routing')
    assert_figures(out, 'training_dynamics')
    for metric in ('fid_efficientnet_lite0', 'kid_efficientnet_lite0', 'attribute_accuracy'):
        assert_figures(out, f'pareto_{metric}')
    assert len(written) == 2 * (2 * 2 + 1 + 3)


def write_study_tables(study: Path) -> None:
    """A study folder as tools/study.py writes it: gap curves and results rows."""
    study.mkdir(parents=True)
    grid = np.arange(10, 1000, 20)
    curves = [dict(run=f'{method.lower()}_i2000_s{seed}', method=method, study='ablation',
                   seed=seed, iters=2000, sparsity=0.35, timestep=t, mean=scale * (1 + t / 1000),
                   ci_low=scale, ci_high=2 * scale)
              for method, scale in (('ALTER', 1e-3), ('Static', 2e-3)) for seed in (0, 1)
              for t in grid]
    curves += [dict(run='alter_i300_s0', method='ALTER', study='length', seed=0, iters=300,
                    sparsity=0.35, timestep=t, mean=5e-3, ci_low=4e-3, ci_high=6e-3)
               for t in grid]
    pd.DataFrame(curves).to_csv(study / 'denoising_gap.csv', index=False)
    rows = [dict(run='dense', study='dense', method='dense-20', steps=20, seed=np.nan,
                 iters=np.nan, sparsity=np.nan, attribute_accuracy=0.8,
                 attribute_accuracy_ci_low=0.78, attribute_accuracy_ci_high=0.82)]
    for method in ('ALTER', 'Static', 'ALTER-lowfreq'):
        for iters, acc in ((300, 0.3), (1000, 0.5), (2000, 0.6), (4000, 0.7)):
            rows.append(dict(run=f'{method.lower()}_i{iters}_s0', method=f'{method}-20',
                             study='ablation' if iters == 2000 else 'length', steps=20, seed=0,
                             iters=iters, sparsity=0.35, attribute_accuracy=acc,
                             attribute_accuracy_ci_low=acc - 0.03,
                             attribute_accuracy_ci_high=acc + 0.03))
    pd.DataFrame(rows).to_csv(study / 'results.csv', index=False)


def test_study_figures_script(tmp_path):
    write_study_tables(tmp_path / 'study')
    written = study_figures.main([str(tmp_path / 'study'), '--out', str(tmp_path / 'out')])
    assert_figures(tmp_path / 'out', 'denoising_gap')
    assert_figures(tmp_path / 'out', 'training_length')
    assert len(written) == 4
    curves = pd.read_csv(tmp_path / 'study' / 'denoising_gap.csv')
    fig = study_figures.plot_denoising_gap(curves)  # the ablation runs only
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ['ALTER (2 seeds)', 'Static (2 seeds)']
    assert len(fig.axes[0].lines) == 2
    with pytest.raises(ValueError, match="no denoising-gap curves of the 'sparsity' runs"):
        study_figures.plot_denoising_gap(curves, 'sparsity')
    fig = study_figures.plot_training_length(pd.read_csv(tmp_path / 'study' / 'results.csv'))
    lines = fig.axes[0].get_legend().get_texts()
    assert sorted(t.get_text() for t in lines) == ['ALTER-20', 'Static-20', 'dense-20']
    assert [len(c[0].get_xdata()) for c in fig.axes[0].containers] == [4, 4]  # 4 lengths each


def test_script_runs_as_a_file_without_training_code(tmp_path):
    """``python analysis/x.py`` finds its package by itself and imports neither alter nor torch."""
    results = write_results(tmp_path)['json']
    script = ROOT / 'analysis' / 'make_figures.py'  # imports every other module of analysis/
    code = ('import runpy, sys; '
            f'sys.argv = ["make_figures.py", "--results", {str(results)!r}, '
            f'"--metrics", "attribute_accuracy", "--out", {str(tmp_path / "out")!r}]; '
            f'runpy.run_path({str(script)!r}, run_name="__main__"); '
            'leaked = {"torch", "alter"} & set(sys.modules); '
            'assert not leaked, leaked')
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': ''}
    # cwd outside the repo: only the script's own sys.path entry can make `analysis` importable
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_figures(tmp_path / 'out', 'pareto_attribute_accuracy')


def test_committed_study_figures_regenerate_from_committed_results(tmp_path):
    study = ROOT / 'docs' / 'study'
    committed = sorted(p.relative_to(study / 'figures') for p in (study / 'figures').rglob('*.png'))
    written = make_figures.make_figures(sorted((study / 'runs').iterdir()),
                                        [study / 'pareto.csv'], tmp_path)
    written += study_figures.main([str(study), '--out', str(tmp_path)])
    assert {Path('denoising_gap.png'), Path('training_length.png')} <= set(committed)
    assert committed and sorted(p.relative_to(tmp_path) for p in written
                                if p.suffix == '.png') == committed
