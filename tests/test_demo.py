"""tools/demo.py, the README's main job, end to end at a tiny size: trains from the
shipped teacher, compares with dense at equal MACs and with a shipped ALTER checkpoint."""
import json
import math
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT

SMALL = ['--num-prompts', '6', '--steps', '6', '3', '--timing-repeats', '1',
         '--timing-batch', '2', '--cfg-options', 'train_cfg.max_iters=3', 'model.hypernet_iters=2',
         'train_dataloader.batch_size=4']


def demo(work_dir, *args, timeout=900):
    result = subprocess.run([sys.executable, 'tools/demo.py', '--work-dir', str(work_dir), *args,
                             *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads((work_dir / 'results.json').read_text())


def test_tiny_demo_writes_its_table_results_and_grid(tmp_path):
    """The whole demo in under a minute: 3 training iterations, 6 prompts, 16 real renders
    for the proxy FID/KID (the default 2,000 take minutes to featurise)."""
    output, results = demo(tmp_path, '--num-reference', '16', timeout=300)
    assert set(results) == {'rows', 'stage_seconds', 'settings', 'experts'}
    rows = {row['method']: row for row in results['rows']}
    this, shipped = 'ALTER-3 (this run)', 'ALTER-3 (shipped)'
    equal = round(3 * rows[this]['keep_ratio'])
    assert list(rows) == list(dict.fromkeys(['dense-6', 'dense-3', f'dense-{equal}', this,
                                             shipped]))
    assert results['settings']['num_prompts'] == 6 and results['settings']['num_reference'] == 16
    assert set(results['experts']) == {this, shipped}
    assert results['experts'][shipped]['num_experts'] == 4
    assert len(results['experts'][shipped]['routing_table']) == 1000
    for name, row in rows.items():
        assert 0 < row['keep_ratio'] <= 1 and row['seconds_per_generation'] > 0, name
        assert row['gmacs_per_generation'] > 0
        assert math.isfinite(row['fid_efficientnet_lite0']) and row['fid_efficientnet_lite0'] > 0
        assert row['kid_efficientnet_lite0_std'] >= 0
        for key in ('attribute_accuracy', 'alignment_lit_minilm_effnet', 'paired_dense-6/ssim'):
            assert row[f'{key}_ci_low'] <= row[key] <= row[f'{key}_ci_high'], (name, key)
        assert 0 <= row['attribute_accuracy'] <= 1
    # MACs follow the step counts and the keep ratio; dense-6 is its own reference.
    assert rows['dense-6']['macs_vs_dense_6'] == 1.0 and rows['dense-3']['macs_vs_dense_6'] == 0.5
    assert rows['dense-6']['paired_dense-6/ssim'] == 1.0 > rows['dense-3']['paired_dense-6/ssim']
    assert rows[shipped]['keep_ratio'] == pytest.approx(0.65, abs=0.02)
    assert rows[shipped]['macs_vs_dense_6'] < 0.5 * rows[shipped]['keep_ratio'] + 0.05
    assert rows[shipped]['gmacs_per_generation'] < rows['dense-3']['gmacs_per_generation']
    assert set(results['stage_seconds']) == {'train', 'sample', 'timing', 'evaluate', 'total'}
    with Image.open(tmp_path / 'grid.png') as grid:  # 6 prompts x (real render + 4 methods)
        assert grid.format == 'PNG' and grid.height > grid.width / 2
    assert (tmp_path / 'alter_checkpoint' / 'experts.json').exists()
    # The ratio columns are named by the step counts compared.
    assert 'speedup_vs_dense_6' in output and 'speedup_vs_dense_3' in output and 'wrote' in output


@pytest.mark.slow  # minutes: the proxy FID's features of 2,000 reference renders
def test_demo_compares_its_run_with_dense_and_a_shipped_checkpoint(tmp_path):
    first = tmp_path / 'first'
    _, results = demo(first)  # with the committed checkpoint, trained to the study's length
    assert results['settings']['shipped'] == 'checkpoints/shapes_alter_e4_s35'
    shipped = results['experts']['ALTER-3 (shipped)']
    assert shipped['num_experts'] == 4 and abs(shipped['keep_ratio']['fvcore'] - 0.65) < 0.02
    # The first run's checkpoint stands in for the shipped one.
    output, results = demo(tmp_path / 'second', '--shipped', str(first / 'alter_checkpoint'))
    rows = {row['method']: row for row in results['rows']}
    equal = round(3 * rows['ALTER-3 (this run)']['keep_ratio'])  # 3 after 3 iterations
    assert list(rows) == list(dict.fromkeys(['dense-6', 'dense-3', f'dense-{equal}',
                                             'ALTER-3 (this run)', 'ALTER-3 (shipped)']))
    assert rows['dense-6']['macs_vs_dense_6'] == 1.0
    assert rows['dense-3']['macs_vs_dense_6'] == 0.5
    for row in rows.values():  # every quality number with its interval, on 6 prompts
        assert row['attribute_accuracy_ci_low'] <= row['attribute_accuracy'] \
            <= row['attribute_accuracy_ci_high']
        assert 'paired_dense-6/ssim' in row
    assert rows['dense-6']['paired_dense-6/ssim'] == 1.0  # dense-6 is the reference
    assert results['settings']['threads'] == 1 and results['settings']['num_prompts'] == 6
    assert set(results['experts']) == {'ALTER-3 (this run)', 'ALTER-3 (shipped)'}
    assert (tmp_path / 'second' / 'grid.png').stat().st_size > 0
    assert 'ALTER-3 (shipped)' in output and 'speedup_vs_dense_6' in output


def test_demo_runs_on_the_dit_backbone(tmp_path):
    """``--backbone dit`` end to end, from a DiT teacher made here the way
    configs/teacher/shapes_dit_dense.py makes the shipped one (2 iterations on a cache of
    8 renders): the same table, with the transformer's MACs and routed experts."""
    teacher_config = 'configs/teacher/shapes_dit_dense.py'
    cache, run = tmp_path / 'cache', tmp_path / 'teacher_run'
    renders = ['train_dataloader.dataset._delete_=True', 'train_dataloader.dataset.type=ShapesT2I',
               'train_dataloader.dataset.num_samples=8']
    for command in (
            ['tools/precompute_cache.py', teacher_config, '--out', str(cache), '--shard-size',
             '8', '--batch-size', '8', '--cfg-options', *renders],
            ['tools/train.py', teacher_config, '--work-dir', str(run), '--cfg-options',
             f'train_dataloader.dataset.root={cache}', 'train_dataloader.batch_size=4',
             'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2'],
            ['tools/export.py', str(run / 'iter_2.pth'), '--half', '--out', str(tmp_path / 'dit')]):
        result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    output, results = demo(tmp_path / 'demo', '--backbone', 'dit', '--shipped', '',
                           '--num-reference', '16', '--cfg-options',
                           f'model.pretrained={tmp_path / "dit"}', timeout=300)
    rows = {row['method']: row for row in results['rows']}
    assert results['settings']['backbone'] == 'dit'
    assert list(rows)[:2] == ['dense-6', 'dense-3'] and 'ALTER-3 (this run)' in rows
    assert rows['dense-3']['macs_vs_dense_6'] == 0.5
    this = rows['ALTER-3 (this run)']
    assert 0 < this['keep_ratio'] <= 1 and this['gmacs_per_generation'] > 0
    assert results['experts']['ALTER-3 (this run)']['num_experts'] == 4
    assert (tmp_path / 'demo' / 'grid.png').stat().st_size > 0
