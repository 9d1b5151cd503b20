"""tools/demo.py, the README's main job, end to end at a tiny size: trains from the
shipped teacher, compares with dense at equal MACs and with a shipped ALTER checkpoint."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SMALL = ['--num-prompts', '6', '--steps', '6', '3', '--timing-repeats', '1',
         '--timing-batch', '2', '--cfg-options', 'train_cfg.max_iters=3', 'model.hypernet_iters=2',
         'train_dataloader.batch_size=4']


def demo(work_dir, *args):
    result = subprocess.run([sys.executable, 'tools/demo.py', '--work-dir', str(work_dir), *args,
                             *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads((work_dir / 'results.json').read_text())


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
    assert rows['dense-6']['macs_vs_dense_50'] == 1.0
    assert rows['dense-3']['macs_vs_dense_50'] == 0.5
    for row in rows.values():  # every quality number with its interval, on 6 prompts
        assert row['attribute_accuracy_ci_low'] <= row['attribute_accuracy'] \
            <= row['attribute_accuracy_ci_high']
        assert 'paired_dense-6/ssim' in row
    assert rows['dense-6']['paired_dense-6/ssim'] == 1.0  # dense-6 is the reference
    assert results['settings']['threads'] == 1 and results['settings']['num_prompts'] == 6
    assert set(results['experts']) == {'ALTER-3 (this run)', 'ALTER-3 (shipped)'}
    assert (tmp_path / 'second' / 'grid.png').stat().st_size > 0
    assert 'ALTER-3 (shipped)' in output and 'speedup_vs_dense_50' in output
