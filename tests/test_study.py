"""tools/study.py: paired comparisons from per-image files, and a whole tiny study
(train, export, sample, score, compare, figures, resume) in a subprocess."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from alter.utils.timing import device_name
from tests.conftest import ROOT, load_tool

study = load_tool('study')


def test_run_and_point_names_follow_the_plan():
    plan = study.Plan(methods=('ALTER', 'Static'), seeds=(0, 1), iters=8, lengths=(4, 16),
                      sparsities=(0.45, ), dense_steps=(2, 3), alter_steps=(3, ))
    runs = [r.name for r in study.study_runs(plan)]
    # The most telling first: seed 0 with the option, short runs, more seeds, long runs.
    assert runs == ['alter_i8_s0', 'static_i8_s0', 'alter-lowfreq_i8_s0', 'alter_i4_s0',
                    'static_i4_s0', 'alter_i8_s1', 'static_i8_s1', 'alter_i16_s0',
                    'static_i16_s0', 'alter_i16_s1', 'static_i16_s1', 'alter_i8_p45_s0']
    points = {p.name: p.study for p in study.study_points(plan)}
    assert points['dense@2'] == 'dense' and points['alter_i8_s1@20'] == 'ablation'
    assert points['alter_i4_s0@20'] == 'length' and points['alter_i8_p45_s0@20'] == 'sparsity'
    assert points['alter_i8_s0@3'] == 'steps'
    # Shorter lengths compare at seed 0, longer ones at every seed, also against dense.
    lengths = [(label, seed) for label, seed, _, _ in study.comparisons(plan) if 'at ' in label]
    assert lengths == [('ALTER - Static at 4 iterations', 0), ('ALTER - Static at 8 iterations', 0),
                       *[(f'{c} at 16 iterations', seed) for seed in (0, 1) for c in
                         ('ALTER - Static', 'ALTER-20 - dense-20', 'Static-20 - dense-20')]]
    assert ('ALTER - Static at 16 iterations', 1, 'alter_i16_s1@20', 'static_i16_s1@20') \
        in study.comparisons(plan)
    # T_end at 30 % of each run's length, seeds of the run and of the model.
    options = study.Run('ALTER', 1, 1000).options(cache=None)
    assert 'model.hypernet_iters=300' in options and 'model.seed=1' in options
    assert 'model.budget_fit=0.02' in options
    assert 'model.hypernet.router.min_period=100' in study.Run('ALTER-lowfreq', 0, 10).options(None)
    assert study.Run('Static', 0, 10).num_experts == 1


def test_differences_are_paired_per_seed_and_pooled(tmp_path):
    plan = study.Plan(methods=('ALTER', 'Static'), options=(), seeds=(0, 1), iters=8,
                      lengths=(), few_steps=2, equal_macs_steps=1)
    rng = np.random.default_rng(0)
    per_image = tmp_path / 'per_image'
    per_image.mkdir()
    truth = {}
    for seed in plan.seeds:
        base = rng.normal(size=50)
        for method, shift in (('alter', 0.3), ('static', 0.0)):
            values = base + shift + 0.01 * rng.normal(size=50)
            truth[method, seed] = values
            pd.DataFrame({'prompt': range(50), 'paired_dense50/ssim': values}).to_csv(
                per_image / f'{method}_i8_s{seed}@2.csv.gz', index=False)
    table = study.differences(tmp_path, plan)
    table = table[(table.comparison == 'ALTER - Static') & (table.metric == 'paired_dense50/ssim')]
    assert list(table.seed) == [0, 1, 'pooled']  # no other metric or comparison has files
    for seed in plan.seeds:
        row = table[table.seed == seed].iloc[0]
        direct = (truth['alter', seed] - truth['static', seed]).mean()
        assert row['mean'] == pytest.approx(direct, abs=1e-12)
        # The per-prompt base cancels in the pairing: the interval is narrow around +0.3.
        assert row['ci_low'] < direct < row['ci_high'] and row['ci_high'] - row['ci_low'] < 0.02
    pooled = table[table.seed == 'pooled'].iloc[0]
    per_seed = [(truth['alter', s] - truth['static', s]).mean() for s in plan.seeds]
    assert pooled['mean'] == pytest.approx(np.mean(per_seed), abs=1e-12)
    # Over seeds: the t interval of two runs' differences (12.71 standard errors wide each way).
    half = 12.7062 * np.std(per_seed, ddof=1) / np.sqrt(2)
    assert pooled['seeds'] == 2
    assert (pooled['seeds_ci_low'], pooled['seeds_ci_high']) == pytest.approx(
        (np.mean(per_seed) - half, np.mean(per_seed) + half), abs=1e-4)


def _write_experts(work_dir, run, masks, route):
    folder = study.checkpoint_dir(run, work_dir)
    folder.mkdir(parents=True)
    units = [f'u{i}' for i in range(len(masks[0]))]
    (folder / 'experts.json').write_text(json.dumps(dict(  # the required fields
        format_version=1, architecture=dict(key='k'), space='paper', unit_names=units,
        unit_paths=units, expert_masks=masks, routing_table=route,
        weights_fingerprint=dict(float32='0'))))


def test_mask_distances_compare_the_routed_masks_of_two_seeds(tmp_path):
    runs = [study.Run('ALTER', s, 8) for s in (0, 1)] + [study.Run('Static', 0, 8),
                                                          study.Run('ALTER', 1, 16)]
    # Seed 0 routes t < 500 to [1,1,0,0] and the rest to [0,0,1,1]; seed 1 has the same two
    # masks with the expert ids swapped and the boundary at 750: they differ on every unit
    # for t in [500, 750) and nowhere else.
    _write_experts(tmp_path, runs[0], [[1, 1, 0, 0], [0, 0, 1, 1]], [0] * 500 + [1] * 500)
    _write_experts(tmp_path, runs[1], [[0, 0, 1, 1], [1, 1, 0, 0]], [1] * 750 + [0] * 250)
    _write_experts(tmp_path, runs[2], [[1, 0, 1, 0]], [0] * 1000)
    _write_experts(tmp_path, runs[3], [[1, 1, 1, 0]], [0] * 1000)
    table = study.mask_distances(runs, tmp_path)
    # Static has one run: nothing to compare it with; seed 0 at 8 and seed 1 at 16
    # iterations differ in both: not compared.
    assert len(table) == 2
    row = table.iloc[0]
    assert (row.method, row.seed_a, row.seed_b, row.iters_a, row.iters_b, row.units) == \
        ('ALTER', 0, 1, 8, 8, 4)
    assert row.distance == pytest.approx(0.25)
    assert row.chance == pytest.approx(0.5)  # both keep half the units
    longer = table.iloc[1]  # seed 1 at 8 and 16 iterations: [1,1,1,0] against either mask
    assert (longer.seed_a, longer.iters_a, longer.iters_b) == (1, 8, 16)
    assert longer.distance == pytest.approx(0.25 * 0.75 + 0.75 * 0.25)
    assert longer.chance == pytest.approx(0.5 * 0.25 + 0.75 * 0.5)


def test_runs_off_their_budget_are_left_out_of_the_comparisons(tmp_path):
    plan = study.Plan(methods=('ALTER', 'Static'), options=(), seeds=(0, ), iters=8,
                      lengths=(), few_steps=2, equal_macs_steps=1)
    (tmp_path / 'per_image').mkdir()
    for name in ('alter_i8_s0@2', 'static_i8_s0@2', 'dense@1', 'dense@2'):
        pd.DataFrame({'prompt': range(20), 'paired_dense50/ssim': np.linspace(0, 1, 20)}).to_csv(
            tmp_path / 'per_image' / f'{name}.csv.gz', index=False)
    results = pd.DataFrame(dict(point=['dense@1', 'dense@2', 'alter_i8_s0@2', 'static_i8_s0@2'],
                                run=['dense', 'dense', 'alter_i8_s0', 'static_i8_s0'],
                                keep_ratio=[1.0, 1.0, 0.899, 0.66],
                                sparsity=[np.nan, np.nan, 0.35, 0.35]))
    missed = study.budget_misses(results, plan)
    assert missed == {'alter_i8_s0@2': 0.899}  # 0.66 is within 0.02 of 0.65; dense has no budget
    assert study.met_budget(0.631, 0.35, plan) and not study.met_budget(0.6299, 0.35, plan)
    kept = set(study.differences(tmp_path, plan).comparison)
    assert {'ALTER - Static', 'ALTER-2 - dense-1', 'ALTER-2 - dense-2'} <= kept
    assert study.differences(tmp_path, plan, missed).empty  # every comparison involves ALTER


def run_study(work_dir, out, plan_source: str, timeout: int):
    """tools/study.py's main with a small Plan, in a subprocess group killed on timeout."""
    code = ('import sys; sys.path.insert(0, "tools"); import study; '
            f'study.main(sys.argv[1:], study.Plan({plan_source}))')
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    process = subprocess.Popen(
        [sys.executable, '-c', code, '--work-dir', str(work_dir), '--out', str(out),
         '--jobs', '1', '--cache', 'none'], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_a_tiny_study_trains_scores_compares_and_resumes(tmp_path):
    plan = ("methods=('ALTER', 'Static'), options=(), seeds=(0, 1), iters=6, lengths=(3, ), "
            "sparsities=(), dense_steps=(2, 3), alter_steps=(3, ), few_steps=2, "
            "reference_steps=3, equal_macs_steps=2, gap_pairs=4, gap_grid=(10, 500, 990), "
            "num_prompts=8, budget_tolerance=1.0")  # six iterations do not reach the budget
    work_dir, out = tmp_path / 'work', tmp_path / 'out'
    run_study(work_dir, out, plan, timeout=1500)

    results = pd.read_csv(out / 'results.csv')
    assert sorted(results.point) == sorted([
        'dense@2', 'dense@3', 'alter_i6_s0@2', 'static_i6_s0@2', 'alter_i6_s1@2',
        'static_i6_s1@2', 'alter_i3_s0@2', 'static_i3_s0@2', 'alter_i6_s0@3'])
    assert (results.num_prompts == 8).all()
    students = results[results.run != 'dense']
    # Students are scored against the teacher at the same step count; dense-3 is the
    # 50-step reference of this plan, so it matches itself exactly.
    assert students['paired_teacher/psnr'].notna().all()
    assert results.set_index('point').loc['dense@3', 'paired_dense50/ssim'] == pytest.approx(1.0)
    for _, row in results.iterrows():  # every metric with its interval
        assert row['attribute_accuracy_ci_low'] <= row['attribute_accuracy'] \
            <= row['attribute_accuracy_ci_high']
    per_image = pd.read_csv(out / 'per_image' / 'alter_i6_s0@2.csv.gz')
    assert len(per_image) == 8 and 'paired_teacher/ssim' in per_image

    gaps = pd.read_csv(out / 'denoising_gap.csv')
    assert set(gaps.run) == {r.split('@')[0] for r in students.point}
    assert sorted(set(gaps.timestep)) == [10, 500, 990] and (gaps['mean'] > 0).all()
    routing = pd.read_csv(out / 'routing.csv').set_index('run')
    assert routing.loc['static_i6_s0', 'segments'] == 1
    assert 1 <= routing.loc['alter_i6_s0', 'segments'] <= 1000
    # Where each run trained and each point was scored (the one-thread CPU here).
    assert (routing.trained_on == study.training_device(threads=1)).all()
    assert (results.scored_on == device_name(torch.device('cpu'), threads=1)).all()
    # Per method: seeds 0 and 1 at 6 iterations, 3 and 6 iterations at seed 0.
    distances = pd.read_csv(out / 'mask_distances.csv')
    assert sorted(zip(distances.method, distances.seed_b, distances.iters_a + distances.iters_b)) \
        == [('ALTER', 0, 9), ('ALTER', 1, 12), ('Static', 0, 9), ('Static', 1, 12)]
    assert ((distances.distance >= 0) & (distances.distance <= 1)).all()

    differences = pd.read_csv(out / 'differences.csv')
    alter_static = differences[differences.comparison == 'ALTER - Static']
    assert set(alter_static.seed.astype(str)) == {'0', '1', 'pooled'}
    assert {'paired_dense50/ssim', 'denoising_gap/all'} <= set(alter_static.metric)
    assert 'ALTER - Static at 3 iterations' in set(differences.comparison)
    assert {'ALTER-2 - dense-2'} <= set(differences.comparison)
    for name in ('summary.csv', 'pareto.csv', 'figures/denoising_gap.png',
                 'figures/training_length.png'):
        assert (out / name).exists(), name
    assert json.loads((work_dir / 'alter_i6_s0' / 'checkpoint' / 'experts.json')
                      .read_text())['num_experts'] == 4

    # A second call finds everything done: nothing retrained or rescored.
    output = run_study(work_dir, out, plan, timeout=600)
    assert '6 of 6 runs trained; 0 to train' in output
    assert '9 of 9 points scored; 0 to score' in output
    assert len(pd.read_csv(out / 'results.csv')) == 9
