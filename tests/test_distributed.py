"""Two gloo processes train exactly like one process with the same global batch,
replicated (DDP, grouped UNet step) or sharded (FSDP2, selected UNet step, the default),
and their checkpoints resume in one process."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from alter.engine.parallel import SubmoduleParallel
from alter.registry import MODELS

from .conftest import ROOT, load_tool

TINY = 'configs/alter/tiny_e4_s35.py'
# gate_offset 0.5: the experts switch ~40 % of the units off from the start, so the
# ranks of the grouped UNet step run different units in every step.
OPTIONS = ['train_cfg.max_iters=5', 'model.hypernet_iters=3', 'log_processor.window_size=1',
           'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=3',
           'model.hypernet.gate_offset=0.5']
GROUPED = ['model.unet_step.type=grouped']
ENV = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
COMPARED = ('unet/loss', 'unet/loss_feat_kd', 'keep_ratio_fvcore', 'hyper/loss')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run(command, env=ENV) -> None:
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _train_single(work_dir, *args) -> None:
    _run([sys.executable, 'tools/train.py', TINY, '--work-dir', str(work_dir), *args,
          '--cfg-options', 'train_dataloader.batch_size=4', *OPTIONS, *GROUPED])


def _train_two_ranks(work_dir, *args, options=()) -> None:
    _run(['bash', 'tools/dist_train.sh', TINY, '2', '--work-dir', str(work_dir), *args,
          '--cfg-options', 'train_dataloader.batch_size=2', *OPTIONS, *options],
         dict(ENV, PORT=str(_free_port()), PYTHON=sys.executable))


def _logged(work_dir):
    path = sorted(work_dir.glob('*/vis_data/scalars.json'))[-1]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if 'unet/loss' in r]


def _assert_same_losses(one, two, rel=1e-4, keys=COMPARED):
    assert [r['iter'] for r in one] == [r['iter'] for r in two]
    for a, b in zip(one, two):
        assert ('hyper/loss' in a) == ('hyper/loss' in b)
        for key in keys:
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-6), (a['iter'], key)


@pytest.fixture(scope='module')
def single(tmp_path_factory):
    """One process, global batch 4, grouped UNet step."""
    work_dir = tmp_path_factory.mktemp('single')
    _train_single(work_dir)
    return work_dir


# DDP runs the grouped UNet step, as the single process, or the selected one (the default),
# which gives the same updates; --fsdp the selected one.
@pytest.mark.parametrize('args, options', [
    ([], GROUPED), ([], GROUPED + ['model.gradient_checkpointing=True']), ([], []),
    (['--fsdp'], []), (['--fsdp'], ['model.gradient_checkpointing=True'])],
    ids=['ddp', 'ddp-gradient-checkpointing', 'ddp-selected', 'fsdp',
         'fsdp-gradient-checkpointing'])
def test_two_gloo_ranks_match_one_process_and_resume_in_one(tmp_path, single, args, options):
    double = tmp_path / 'double'
    _train_two_ranks(double, *args, options=options)
    one, two = _logged(single), _logged(double)
    assert len(one) == 5
    _assert_same_losses(one, two)
    experts = [json.loads((d / 'experts.json').read_text()) for d in (single, double)]
    assert 0 < one[-1]['keep_ratio_fvcore'] < 0.9  # units were skipped
    assert experts[0]['expert_masks'] == experts[1]['expert_masks']
    assert experts[0]['routing_table'] == experts[1]['routing_table']

    # The 2-rank checkpoint is an ordinary one: plain keys, full tensors, full
    # optimiser state; one process resumes it and repeats iterations 4-5.
    checkpoint = torch.load(double / 'iter_3.pth', weights_only=False)
    assert not any('module.' in k for k in checkpoint['state_dict'])
    assert checkpoint['state_dict']['unet.conv_in.weight'].shape == (16, 12, 3, 3)
    exp_avg = checkpoint['optimizer']['unet']['state'][0]['exp_avg']
    assert type(exp_avg) is torch.Tensor and exp_avg.shape == (16, 12, 3, 3)
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    shutil.copy(double / 'iter_3.pth', resumed / 'iter_3.pth')
    _train_single(resumed, '--resume', str(resumed / 'iter_3.pth'))
    _assert_same_losses(one[3:], _logged(resumed), rel=1e-5)


def test_fsdp_mixed_precision_trains_close_to_float32(tmp_path, single):
    """bf16 parameters in compute, fp32 gradient reduction: same losses to bf16 precision."""
    _train_two_ranks(tmp_path, '--fsdp', options=[
        'model_wrapper_cfg.mixed_precision.param_dtype=bfloat16',
        'model_wrapper_cfg.mixed_precision.reduce_dtype=float32'])
    mixed = _logged(tmp_path)
    _assert_same_losses(_logged(single), mixed, rel=5e-2, keys=('unet/loss', 'hyper/loss'))
    assert any(a['unet/loss'] != b['unet/loss'] for a, b in zip(_logged(single), mixed))


@pytest.mark.parametrize('config, message', [
    (TINY, 'launch with tools/dist_train.sh'),
    ('configs/teacher/shapes_dense.py', "EMAHook deep-copies the whole model.*UNetEMAHook")])
def test_fsdp_refuses_what_it_cannot_run(monkeypatch, config, message):
    monkeypatch.setattr(sys, 'argv', ['train.py', f'{ROOT}/{config}', '--fsdp'])
    with pytest.raises(ValueError, match=message):
        load_tool('train').main()


def test_bad_wrapper_settings_are_refused():
    cfg = Config.fromfile(f'{ROOT}/{TINY}').model
    model = MODELS.build(cfg)
    with pytest.raises(KeyError, match=r"\['unett'\].*sub-modules: .*'teacher', 'unet'"):
        SubmoduleParallel(model, shard=['unett'])
    with pytest.raises(ValueError, match="dtype names such as 'bfloat16'.*got 'bf16'"):
        SubmoduleParallel(model, shard=['unet'], mixed_precision=dict(param_dtype='bf16'))
    grouped = MODELS.build(dict(cfg, unet_step=dict(type='grouped')))
    with pytest.raises(ValueError,
                       match=r"cannot shard \['unet'\].*unet_step=dict\(type='selected'\)"):
        SubmoduleParallel(grouped, shard=['unet', 'teacher'])


def _dist_train(*args, cwd=ROOT, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', f'{ROOT}/tools/dist_train.sh', *args], cwd=cwd,
                          env=dict(ENV, PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=timeout)


def test_dist_train_help_and_missing_arguments():
    shown = _dist_train('--help')
    assert shown.returncode == 0 and shown.stdout.startswith('usage: tools/dist_train.sh CONFIG')
    for args, problem in [((), 'expected CONFIG and NUM_GPUS, got 0'),
                          ((TINY,), 'expected CONFIG and NUM_GPUS, got 1'),
                          ((TINY, 'two'), "NUM_GPUS must be a positive integer, got 'two'")]:
        refused = _dist_train(*args)
        assert refused.returncode == 2 and problem in refused.stderr, refused.stderr
        assert 'usage: tools/dist_train.sh CONFIG NUM_GPUS' in refused.stderr


def test_dist_train_takes_relative_paths_from_the_callers_directory(tmp_path):
    (tmp_path / 'mine.py').write_text(f"_base_ = ['{ROOT}/{TINY}']\n")
    (tmp_path / 'runs').mkdir()
    (tmp_path / 'runs' / 'cut.pth').write_bytes(b'cut off')
    # Both relative paths are found in tmp_path: the config loads, and training stops at the
    # checkpoint, refused as cut off (before any process group starts).
    result = _dist_train('mine.py', '1', '--resume', 'runs/cut.pth', cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert '--resume runs/cut.pth: the checkpoint is incomplete (7 bytes' in result.stderr, \
        result.stderr[-3000:]
