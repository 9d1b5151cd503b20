"""Two gloo processes train exactly like one process with the same global batch."""
import json
import os
import socket
import subprocess
import sys

import pytest

from .conftest import ROOT

TINY = 'configs/alter/tiny_e4_s35.py'
OPTIONS = ['train_cfg.max_iters=5', 'model.hypernet_iters=3', 'log_processor.window_size=1',
           'default_hooks.logger.interval=1']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run(command, env) -> None:
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _logged(work_dir):
    path = next(work_dir.glob('*/vis_data/scalars.json'))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if 'unet/loss' in r]


def test_two_gloo_ranks_match_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    single, double = tmp_path / 'single', tmp_path / 'double'
    _run([sys.executable, 'tools/train.py', TINY, '--work-dir', str(single),
          '--cfg-options', 'train_dataloader.batch_size=4', *OPTIONS], env)
    _run(['bash', 'tools/dist_train.sh', TINY, '2', '--work-dir', str(double),
          '--cfg-options', 'train_dataloader.batch_size=2', *OPTIONS],
         dict(env, PORT=str(_free_port()), PYTHON=sys.executable))
    one, two = _logged(single), _logged(double)
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        for key in ('unet/loss', 'unet/loss_feat_kd', 'keep_ratio_fvcore'):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a['iter'], key)
        if 'hyper/loss' in a:
            assert a['hyper/loss'] == pytest.approx(b['hyper/loss'], rel=1e-4)
    experts = [json.loads((d / 'experts.json').read_text()) for d in (single, double)]
    assert experts[0]['expert_masks'] == experts[1]['expert_masks']
    assert experts[0]['routing_table'] == experts[1]['routing_table']
