"""Bad inputs and faults: nothing lost, nothing run, nothing silent.

One test per case of checkpoints, resume, artifacts and the tools' inputs. Tools
run in-process as their command line runs them (``run_tool``: an ``InputError``
exits with status 1 and its message, argparse with status 2); killing a save
and crafted files that would run code run as real subprocesses, with timeouts.
Each test also checks that no good file was lost or half-written.
"""
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.fileio.backends import LocalBackend
from mmengine.runner import Runner
from PIL import Image

from alter.datasets.latent_cache import shard_path
from alter.datasets.text_image import ImageFolderCaptions
from alter.engine.checkpoint import load_checkpoint_file, trust_local_checkpoints
from alter.engine.run_config import check_phase_length
from alter.evaluation.prompts import load_prompts
from alter.evaluation.reference import ReferenceImages
from alter.inference.experts import load_experts, load_unet, save_checkpoint
from alter.inference.pipeline import TextToImage
from alter.inference.routing import ExpertRouter
from alter.registry import DATASETS, MODELS, PRUNING_SPACES
from alter.units.macs import architecture_key
from alter.utils.cli import InputError, run_tool
from alter.utils.config import load_config

from .conftest import ROOT, build_tiny_unet, load_tool

TINY = f'{ROOT}/configs/alter/tiny_e4_s35.py'
SHAPES = f'{ROOT}/configs/alter/shapes_e4_s35.py'
DENSE = f'{ROOT}/configs/teacher/shapes_dense.py'
# 4 iterations, a checkpoint every 2: iter_2.pth and iter_4.pth.
SHORT_RUN = ['train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=2',
             'model.hypernet_iters=2']
SUBPROCESS_TIMEOUT = 180  # seconds; a tiny run takes about 15


# -- helpers -------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def mac_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('macs')


@pytest.fixture(autouse=True)
def _shared_mac_cache(_mac_cache, mac_cache, monkeypatch):
    """The tiny UNet's MACs are counted once for the module."""
    monkeypatch.setenv('ALTER_CACHE', str(mac_cache))


def exits(capsys, tool: str, *argv) -> Tuple[int, str]:
    """(exit status, message) of ``tools/<tool>.py ARGV``, run in-process as its command line
    runs it."""
    with pytest.raises(SystemExit) as stop:
        run_tool(lambda: load_tool(tool).main([str(a) for a in argv]))
    code = stop.value.code
    return (1, code) if isinstance(code, str) else (code, capsys.readouterr().err)


def train(work_dir: Path, *args, options=SHORT_RUN) -> None:
    """tools/train.py on the tiny config, in-process (a fresh logger per run)."""
    load_tool('train').main([TINY, '--work-dir', str(work_dir), *map(str, args),
                             '--cfg-options', *options, f'experiment_name={uuid.uuid4().hex}'])


def resume(work_dir: Path, *args, iters: int = 6, options=()) -> None:
    train(work_dir, '--resume', *args,
          options=[*SHORT_RUN, f'train_cfg.max_iters={iters}', *options])


def hashes(folder: Path) -> Dict[str, str]:
    """SHA-1 of every file directly in ``folder``."""
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def temp_files(folder: Path) -> list:
    return sorted(p.name for p in folder.parent.rglob('.*tmp*'))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, mac_cache) -> Path:
    """A work dir of tools/train.py: iter_2.pth, iter_4.pth, last_checkpoint, run_config.json."""
    work_dir = tmp_path_factory.mktemp('tiny') / 'run'
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('ALTER_CACHE', str(mac_cache))
        train(work_dir)
    return work_dir


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of ``tiny_run`` for a test to change."""
    copy = tmp_path / 'run'
    shutil.copytree(tiny_run, copy)
    return copy


def subprocess_env(mac_cache: Path) -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', ALTER_CACHE=str(mac_cache))


# -- data loss: checkpoints and resume -------------------------------------------------------

KILL_DURING_SECOND_SAVE = '''
import runpy, sys, time
from mmengine.fileio.backends import LocalBackend

put, saves = LocalBackend.put, []


def put_then_get_killed(self, obj, filepath):
    if 'iter_' in str(filepath):
        saves.append(filepath)
        if len(saves) == 2:  # half of the second checkpoint reaches the disk, then a kill
            with open(filepath, 'wb') as file:
                file.write(obj[:len(obj) // 2])
            print('SAVING', flush=True)
            time.sleep(600)
    put(self, obj, filepath)


LocalBackend.put = put_then_get_killed
sys.argv = ['tools/train.py'] + sys.argv[1:]
runpy.run_path('tools/train.py', run_name='__main__')
'''


def test_kill_during_save_keeps_the_last_checkpoint_and_resume_cleans_up(tmp_path, mac_cache,
                                                                         capsys):
    script = tmp_path / 'kill_during_save.py'
    script.write_text(KILL_DURING_SECOND_SAVE)
    work_dir = tmp_path / 'run'
    keep_one = 'default_hooks.checkpoint.max_keep_ckpts=1'
    process = subprocess.Popen(
        [sys.executable, str(script), TINY, '--work-dir', str(work_dir), '--cfg-options',
         *SHORT_RUN, keep_one],
        cwd=ROOT, env=subprocess_env(mac_cache), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(SUBPROCESS_TIMEOUT, process.kill)
    watchdog.start()
    try:
        output = []
        for line in process.stdout:  # ends when the process does
            output.append(line)
            if line.startswith('SAVING'):
                os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        watchdog.cancel()
    assert process.returncode == -signal.SIGKILL, ''.join(output[-20:])
    # The checkpoint before the one being written is whole, and named the latest.
    load_checkpoint_file(work_dir / 'iter_2.pth')
    assert not (work_dir / 'iter_4.pth').exists()
    assert Path((work_dir / 'last_checkpoint').read_text()).name == 'iter_2.pth'
    assert list(work_dir.glob('.iter_4.pth.*.tmp'))  # what the kill left

    capsys.readouterr()
    resume(work_dir, iters=4, options=[keep_one])
    assert f'resuming from {work_dir / "iter_2.pth"}' in capsys.readouterr().out
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['iter_4.pth']  # max_keep_ckpts=1
    assert load_checkpoint_file(work_dir / 'iter_4.pth')['meta']['iter'] == 4
    assert not list(work_dir.glob('.*.tmp'))


def _full_disk_after_half(self, obj, filepath):
    if 'iter_' in str(filepath):
        with open(filepath, 'wb') as file:
            file.write(obj[:len(obj) // 2])
        raise OSError(errno.ENOSPC, 'No space left on device', str(filepath))
    LocalBackend.__dict__['put'](self, obj, filepath)


def test_full_disk_leaves_no_half_written_checkpoint(run_copy, monkeypatch):
    before = hashes(run_copy)
    monkeypatch.setattr(LocalBackend, 'put', _full_disk_after_half)
    with pytest.raises(OSError, match='No space left'):
        resume(run_copy)
    assert not (run_copy / 'iter_6.pth').exists()
    assert temp_files(run_copy) == []
    kept = ('iter_2.pth', 'iter_4.pth', 'last_checkpoint', 'run_config.json')
    assert {k: hashes(run_copy)[k] for k in kept} == {k: before[k] for k in kept}


def test_resume_without_last_checkpoint_continues_from_the_newest(run_copy, capsys):
    (run_copy / 'last_checkpoint').unlink()
    before = hashes(run_copy)
    resume(run_copy)
    out = capsys.readouterr().out
    assert f'has no last_checkpoint: resuming from {run_copy / "iter_4.pth"}' in out
    assert load_checkpoint_file(run_copy / 'iter_6.pth')['meta']['iter'] == 6
    for name in ('iter_2.pth', 'iter_4.pth'):  # not overwritten by a restart at iteration 0
        assert hashes(run_copy)[name] == before[name]


@pytest.mark.parametrize('damage, problem', [
    (lambda p: p.unlink(), 'missing'),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), 'incomplete (1000 bytes'),
    (lambda p: p.write_bytes(b''), 'incomplete (0 bytes'),
])
def test_resume_falls_back_from_a_bad_last_checkpoint(run_copy, capsys, damage, problem):
    damage(run_copy / 'iter_4.pth')
    good = hashes(run_copy)['iter_2.pth']
    resume(run_copy)
    out = capsys.readouterr().out
    assert f'names iter_4.pth, which is {problem}' in out
    assert f'resuming from {run_copy / "iter_2.pth"}, the newest complete checkpoint' in out
    assert load_checkpoint_file(run_copy / 'iter_6.pth')['meta']['iter'] == 6
    assert hashes(run_copy)['iter_2.pth'] == good


def test_copied_work_dir_resumes_from_its_own_checkpoint(run_copy, tmp_path, capsys):
    copy = tmp_path / 'copy'
    shutil.copytree(run_copy, copy)
    shutil.rmtree(run_copy)  # last_checkpoint of the copy still names the original's file
    resume(copy)
    assert f'resuming from {copy / "iter_4.pth"} (last_checkpoint)' in capsys.readouterr().out
    assert (copy / 'iter_6.pth').exists() and not run_copy.exists()


def test_resume_path_from_another_config_is_refused(run_copy, tmp_path, capsys):
    checkpoint = run_copy / 'iter_4.pth'
    fresh = tmp_path / 'fresh'
    options = [*SHORT_RUN, 'model.num_experts=2', 'train_cfg.max_iters=6']
    status, message = exits(capsys, 'train', TINY, '--work-dir', fresh, '--resume', checkpoint,
                            '--cfg-options', *options)
    assert status == 1
    assert f'cannot resume {checkpoint}: it was made by a different config' in message
    assert 'model.num_experts: 4 -> 2' in message
    # The checkpoint alone, without its run's record: its weights do not fit the model.
    alone = tmp_path / 'alone' / 'iter_4.pth'
    alone.parent.mkdir()
    shutil.copy(checkpoint, alone)
    status, message = exits(capsys, 'train', TINY, '--work-dir', tmp_path / 'fresh2', '--resume',
                            alone, '--cfg-options', *options)
    assert status == 1 and f'{alone} does not fit this model' in message
    assert 'expert_masks: (4, 34) in the checkpoint, (2, 34) in the model' in message
    assert not list(tmp_path.rglob('iter_6.pth'))
    assert load_checkpoint_file(checkpoint)['meta']['iter'] == 4


# -- data loss: exported checkpoints and stored images ---------------------------------------

def _dense_experts(unet, num_experts: int = 2) -> dict:
    """Experts that keep every unit, as ALTER exports them (the fields tests need)."""
    names = [u.name for u in PRUNING_SPACES.build(dict(type='paper')).find(unet)]
    return dict(architecture=dict(key=architecture_key(unet)), space='paper', unit_names=names,
                num_experts=num_experts, expert_masks=[[1] * len(names)] * num_experts,
                routing_table=[t * num_experts // 1000 for t in range(1000)],
                keep_ratio=dict(fvcore=1.0))


def test_interrupted_export_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    old_unet, new_unet = build_tiny_unet(seed=0), build_tiny_unet(seed=1)
    out = tmp_path / 'checkpoint'
    save_checkpoint(out, old_unet, _dense_experts(old_unet))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()}
    dumps = json.dumps

    def disk_full_at_the_expert_file(obj, *args, **kwargs):
        if isinstance(obj, dict) and 'routing_table' in obj:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return dumps(obj, *args, **kwargs)

    monkeypatch.setattr(json, 'dumps', disk_full_at_the_expert_file)
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint(out, new_unet, _dense_experts(new_unet))
    monkeypatch.undo()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint']  # no temp folder left
    ExpertRouter(load_unet(out), load_experts(out)).remove()  # UNet and experts still agree


@pytest.fixture(scope='module')
def shapes_model():
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        return MODELS.build(Config.fromfile(SHAPES).model).eval()


def _evaluation(checkpoint: Path, prompts: Path, work_dir: Path) -> list:
    """tools/test.py's arguments for 2 prompts, 1 step, MACs only."""
    return [SHAPES, checkpoint, '--prompts', prompts, '--num-prompts', '2', '--steps', '1',
            '--batch-size', '2', '--metrics', 'macs', '--work-dir', work_dir]


def test_image_store_is_keyed_on_what_made_the_images(shapes_model, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(ROOT)
    unet = shapes_model.unet
    checkpoint = save_checkpoint(tmp_path / 'ckpt', unet, dict(
        _dense_experts(unet), keep_ratio=dict(fvcore=0.4)))  # an edited keep ratio
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('a red circle\na blue square\n')
    argv = _evaluation(checkpoint, prompts, tmp_path / 'w')
    row = load_tool('test').main(list(map(str, argv)))['rows'][0]
    assert row['keep_ratio'] == pytest.approx(1.0)  # from the masks, not the file's 0.4
    images = hashes(tmp_path / 'w' / 'images' / 'ckpt-1')

    prompts.write_text('a green star\na blue square\n')  # the same file name, new captions
    status, message = exits(capsys, 'test', *argv)
    assert status == 1 and "other settings (differing: ['prompts'])" in message

    prompts.write_text('a red circle\na blue square\n')
    with torch.no_grad():
        other = type(unet).from_config(unet.config)  # re-exported to the same path
    save_checkpoint(tmp_path / 'ckpt', other, _dense_experts(other))
    status, message = exits(capsys, 'test', *argv)
    assert status == 1 and "other settings (differing: ['weights'])" in message
    assert hashes(tmp_path / 'w' / 'images' / 'ckpt-1') == images


# -- code execution from files ---------------------------------------------------------------

class _RunsCode:
    """Unpickling it runs ``exec``, which writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("ran")', )


def _python_writing(marker: Path) -> str:
    return f'open({str(marker)!r}, "w").write("ran")\nmodel = dict(type="ALTER")\n'


def _crafted(kind: str, folder: Path, marker: Path, tiny_run: Path) -> Path:
    """A .pth that runs code when read the unsafe way: by its pickle, or by the Python
    that mmengine (``meta['config']``) or the old export (``meta['cfg']``) executes."""
    path = folder / 'iter_4.pth'
    if kind == 'pickle':
        torch.save(dict(meta=dict(iter=4), state_dict={}, payload=_RunsCode(marker)), path)
        return path
    checkpoint = load_checkpoint_file(tiny_run / 'iter_4.pth')
    checkpoint['meta'][kind] = _python_writing(marker)
    torch.save(checkpoint, path)
    if kind == 'cfg':  # export rebuilds from the run's record, which lies beside it
        shutil.copy(tiny_run / 'run_config.json', folder / 'run_config.json')
    return path


@pytest.mark.parametrize('tool, kind, message', [
    ('train', 'pickle', 'holds objects a checkpoint of tools/train.py never holds '
                        '(Unsupported global: GLOBAL exec)'),
    ('train', 'config', "holds meta['config'], Python source that mmengine would run"),
    ('export', 'pickle', 'holds objects a checkpoint of tools/train.py never holds'),
    ('export', 'cfg', None),
])
def test_crafted_checkpoints_run_no_code(tiny_run, mac_cache, tmp_path, tool, kind, message):
    marker = tmp_path / 'code_ran'
    folder = tmp_path / 'crafted'
    folder.mkdir()
    path = _crafted(kind, folder, marker, tiny_run)
    command = [sys.executable, f'tools/{tool}.py']
    command += [TINY, '--work-dir', str(tmp_path / 'w'), '--resume', str(path)] \
        if tool == 'train' else [str(path), '--out', str(tmp_path / 'out')]
    result = subprocess.run(command, cwd=ROOT, env=subprocess_env(mac_cache),
                            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert not marker.exists()
    if message is None:  # a good checkpoint whose stored config is code: exported without it
        assert result.returncode == 0, result.stderr[-2000:]
        load_experts(tmp_path / 'out')
    else:
        assert result.returncode == 1, result.stderr[-2000:]
        assert f'error: checkpoint {path} {message}' in result.stderr
        assert 'Traceback' not in result.stderr
        assert not (tmp_path / 'out').exists() and not list(tmp_path.rglob('iter_6.pth'))


def test_image_folder_reads_stay_inside_its_root(tmp_path):
    root, outside = tmp_path / 'images', tmp_path / 'secret.png'
    root.mkdir()
    Image.new('RGB', (8, 8), (255, 0, 0)).save(root / 'red.png')
    Image.new('RGB', (8, 8), (0, 0, 255)).save(outside)
    (root / 'captions.csv').write_text(f'file_name,caption\nred.png,red\n../secret.png,up\n'
                                       f'{outside},absolute\n')
    dataset = ImageFolderCaptions(str(root), 'captions.csv', max_skip_fraction=1.0,
                                  transform=dict(type='SDImageTransform', resolution=8))
    samples = [dataset[i] for i in range(3)]
    assert [s['key'] for s in samples] == ['red.png'] * 3  # the outside ones skipped:
    assert dataset.num_skipped == 3  # index 1, then 2 and (wrapping round) 1 again


# -- corruption and NaN ----------------------------------------------------------------------

def test_non_finite_loss_stops_training_naming_iteration_and_term(tmp_path, capsys):
    status, message = exits(capsys, 'train', TINY, '--work-dir', tmp_path, '--cfg-options',
                            *SHORT_RUN, 'model.loss_weights.denoise=nan')
    assert status == 1
    assert message.startswith('error: non-finite loss at iteration 1: ')
    assert 'unet/loss_denoise=nan' in message
    assert not list(tmp_path.glob('*.pth')) and not list(tmp_path.glob('.*.tmp'))


def test_non_finite_weights_are_never_saved(tmp_path):
    cfg = Config.fromfile(TINY)
    cfg.merge_from_dict({'train_cfg.max_iters': 2, 'default_hooks.checkpoint.interval': 2,
                         'model.hypernet_iters': 2})
    cfg.work_dir, cfg.experiment_name = str(tmp_path), uuid.uuid4().hex
    trust_local_checkpoints()
    runner = Runner.from_cfg(cfg)  # mmengine's own Runner: no loss check
    with torch.no_grad():
        runner.model.unet.conv_in.weight[0] = float('nan')
    with pytest.raises(FloatingPointError, match=r'not saving the checkpoint of iteration 2: '
                                                 r'\d+ weight tensors hold non-finite values'):
        runner.train()
    assert not list(tmp_path.glob('*.pth')) and not list(tmp_path.glob('.*.tmp'))


def test_resume_from_a_corrupt_checkpoint_is_refused(run_copy, capsys):
    checkpoint = load_checkpoint_file(run_copy / 'iter_4.pth')
    checkpoint['state_dict']['unet.conv_in.weight'].view(-1)[:64] = float('nan')  # flipped bits
    torch.save(checkpoint, run_copy / 'iter_4.pth')
    status, message = exits(capsys, 'train', TINY, '--work-dir', run_copy, '--resume',
                            '--cfg-options', *SHORT_RUN, 'train_cfg.max_iters=6')
    assert status == 1 and f'checkpoint {run_copy / "iter_4.pth"} holds non-finite values' in \
        message and 'first: unet.conv_in.weight' in message
    assert not (run_copy / 'iter_6.pth').exists()


def test_corrupt_unet_weights_are_refused_naming_the_file(tmp_path, capsys):
    unet = build_tiny_unet()
    checkpoint = save_checkpoint(tmp_path / 'ckpt', unet, _dense_experts(unet))
    weights = checkpoint / 'unet' / 'diffusion_pytorch_model.safetensors'
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], 'little') + 4096  # past the header, amid the weights
    data[start:start + 4096] = b'\xff' * 4096  # 4 KB of 0xFF: NaNs
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r'the UNet weights in .*unet \(diffusion_pytorch_model'
                                         r'\.safetensors\) hold non-finite values'):
        load_unet(checkpoint)
    status, message = exits(capsys, 'test', TINY, checkpoint, '--prompts', 'shapes',
                            '--metrics', 'macs', '--work-dir', tmp_path / 'w')
    assert status == 1 and 'diffusion_pytorch_model.safetensors) hold non-finite' in message
    assert not (tmp_path / 'w').exists()


def _precompute(out: Path, capsys) -> str:
    load_tool('precompute_cache').main([SHAPES, '--out', str(out), '--shard-size', '4',
                                        '--batch-size', '4', '--cfg-options',
                                        'train_dataloader.dataset.num_samples=10'])
    return capsys.readouterr().out


def test_latent_cache_shards_are_validated(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _precompute(tmp_path, capsys)
    shards = [shard_path(tmp_path, k) for k in range(3)]
    good = shards[1].read_bytes()
    shards[1].write_bytes(good[:len(good) // 2])  # truncated
    with pytest.raises(InputError, match=rf'latent cache file {re.escape(str(shards[1]))} is '
                                         'unreadable'):
        DATASETS.build(dict(type='LatentCacheDataset', root=str(tmp_path)))
    out = _precompute(tmp_path, capsys)
    assert f'{shards[1]} is unreadable' in out and '2 done, 1 to write' in out
    assert shards[1].read_bytes() == good

    header = 8 + int.from_bytes(good[:8], 'little')
    shards[1].write_bytes(good[:header] + b'\xff' * 64 + good[header + 64:])  # flipped bits
    cache = DATASETS.build(dict(type='LatentCacheDataset', root=str(tmp_path)))
    cache[0]  # other shards read fine
    with pytest.raises(InputError, match=rf'latent cache file {re.escape(str(shards[1]))} holds '
                                         'non-finite'):
        cache[4]


# -- silent acceptance of wrong values -------------------------------------------------------

@pytest.mark.parametrize('value', ['0', '-3'])
def test_a_hypernetwork_phase_that_never_runs_is_refused(tmp_path, capsys, value):
    status, message = exits(capsys, 'train', TINY, '--work-dir', tmp_path, '--cfg-options',
                            *SHORT_RUN, f'model.hypernet_iters={value}')
    assert status == 1 and f'model.hypernet_iters={value}: the hypernetwork phase' in message
    assert not list(tmp_path.iterdir())


def test_a_hypernetwork_phase_longer_than_the_run_is_warned_about():
    cfg = load_config(TINY, {'train_cfg.max_iters': 20})
    with pytest.warns(UserWarning, match=r'hypernet_iters=30 exceeds train_cfg.max_iters=20'):
        check_phase_length(cfg)


@pytest.mark.parametrize('config, option, message', [
    (TINY, 'train_cgf.max_iters=5', "'train_cgf' is not a setting of the config or of "
                                    "mmengine's Runner; did you mean 'train_cfg'"),
    (TINY, 'model.hypernet_iter=5', "'hypernet_iter' is not an argument of the model type "
                                    "ALTER; did you mean 'hypernet_iters'"),
    (DENSE, 'model.num_experts=4', "'num_experts' is not an argument of the model type "
                                   'LatentDiffusion'),
])
def test_misspelled_cfg_options_are_refused(tmp_path, capsys, config, option, message):
    status, error = exits(capsys, 'train', config, '--work-dir', tmp_path, '--cfg-options',
                          option)
    assert status == 1 and f'--cfg-options {option.split("=")[0]}: {message}' in error
    assert not list(tmp_path.iterdir())


def test_model_keys_are_the_arguments_of_the_model_type():
    load_config(TINY, {'model.num_experts': 2, 'model.cond_dropout': 0.1})  # ALTER's and its base's
    load_config(DENSE, {'model.cond_dropout': 0.2, 'model_wrapper_cfg.type': 'X'})


@pytest.fixture
def expert_file(tmp_path) -> Tuple[Path, dict]:
    unet = build_tiny_unet()
    checkpoint = save_checkpoint(tmp_path / 'ckpt', unet, _dense_experts(unet))
    return checkpoint, json.loads((checkpoint / 'experts.json').read_text())


@pytest.mark.parametrize('edit, message', [
    (lambda d: d['expert_masks'][0].__setitem__(3, 0.5), r'expert_masks\[0\] holds 0.5; a gate'),
    (lambda d: d['expert_masks'][1].__setitem__(0, -1), r'expert_masks\[1\] holds -1'),
    (lambda d: d['expert_masks'][0].__setitem__(0, 'false'), r'expert_masks\[0\] holds "false"'),
    (lambda d: d['expert_masks'][0].pop(), r'expert_masks\[0\] must have one gate per unit'),
    (lambda d: d['routing_table'].__setitem__(7, 1.7), 'routing_table holds 1.7'),
    (lambda d: d['routing_table'].__setitem__(7, 2), r'routing_table holds 2; it names experts '
                                                     r'0\.\.1'),
    (lambda d: d.pop('format_version'), "field 'format_version' is missing"),
    (lambda d: d.update(format_version=2), "field 'format_version' must be 1, found 2"),
    (lambda d: d.pop('routing_table'), "field 'routing_table' is missing"),
    (lambda d: d.update(space='blocks'), "field 'space' must be a registered pruning space"),
    (lambda d: d.update(keep_ratio=dict(fvcore=1.4)), "field 'keep_ratio' must be an object"),
    (lambda d: d.update(num_experts=3), 'num_experts is 3 but expert_masks holds 2 masks'),
    (lambda d: d.update(keep_ratios=0.4), r"unknown fields \['keep_ratios'\]"),
    (lambda d: d.update(timestep_grid=dict(type='SigmaGrid')),
     "field 'timestep_grid' must be an object naming a registered timestep grid"),
    (lambda d: d.update(timestep_grid=dict(type='SigmaGrid', sigma_scale='1000')),
     'SigmaGrid: a positive "sigma_scale"'),
    (lambda d: d.update(timestep_grid=dict(type='Sigmas', sigma_scale=1.0)),
     "field 'timestep_grid' must be"),
])
def test_expert_file_is_validated_naming_the_field(expert_file, edit, message):
    checkpoint, data = expert_file
    edit(data)
    (checkpoint / 'experts.json').write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        load_experts(checkpoint)


@pytest.mark.parametrize('content, message', [
    (b'', 'is empty'),
    (b'{"space": "paper",', 'is not valid JSON'),
    ('{"space": "papier"}'.encode('latin-1').replace(b'i', b'\xe9'), 'is not UTF-8 text'),
    (b'[1, 2]', 'must hold a JSON object'),
])
def test_unreadable_expert_files_are_named(expert_file, tmp_path, capsys, content, message):
    checkpoint, _ = expert_file
    (checkpoint / 'experts.json').write_bytes(content)
    status, error = exits(capsys, 'test', TINY, checkpoint, '--prompts', 'shapes', '--metrics',
                          'macs', '--work-dir', tmp_path / 'w')
    assert status == 1 and f'{checkpoint / "experts.json"} {message}' in error
    assert 'export the checkpoint again' in error and not (tmp_path / 'w').exists()


@pytest.mark.parametrize('length', [500, 1500])
def test_routing_table_of_another_length_than_the_noise_schedule_is_refused(expert_file, length):
    checkpoint, data = expert_file
    data['routing_table'] = [0] * length
    (checkpoint / 'experts.json').write_text(json.dumps(data))
    unet = load_unet(checkpoint)
    router = ExpertRouter(unet, load_experts(checkpoint))
    noise = Config.fromfile(TINY).model.noise_scheduler
    with pytest.raises(InputError, match=f'routing_table of the experts has {length} entries, '
                                         'but the noise schedule has 1000'):
        TextToImage(unet, None, None, noise, (16, 16), router)


def test_a_changed_pruning_space_is_refused(expert_file):
    checkpoint, data = expert_file
    data['space'] = 'block'  # the same unit names on this UNet, other modules
    (checkpoint / 'experts.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r'unit down\.0\.attn\.0 is down_blocks\.0\.attentions\.0 '
                                         r'here but .*transformer_blocks\.0 in the file'):
        ExpertRouter(load_unet(checkpoint), load_experts(checkpoint))


@pytest.mark.parametrize('tool, argv, message', [
    ('test', ['--num-prompts', '-1'], "argument --num-prompts: must be a positive integer, got -1"),
    ('test', ['--num-prompts', '0'], 'argument --num-prompts: must be a positive integer'),
    ('test', ['--steps', '0'], 'argument --steps: must be a positive integer'),
    ('test', ['--batch-size', '0'], 'argument --batch-size: must be a positive integer'),
    ('count_macs', ['--resolution', '0'], 'argument --resolution: must be a positive integer'),
    ('benchmark_speed', ['--sparsity', '1.5'], 'argument --sparsity: must lie strictly between'),
])
def test_tool_arguments_are_validated(tmp_path, capsys, tool, argv, message):
    extra = ['dense', '--work-dir', tmp_path] if tool == 'test' else []
    status, error = exits(capsys, tool, TINY, *extra, *argv)
    assert status == 2 and message in error
    assert not list(tmp_path.iterdir())


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    gray = np.full((8, 8), 32768, dtype=np.uint16)  # mid-gray at 16 bits
    Image.fromarray(gray).save(tmp_path / 'gray16.png')
    assert Image.open(tmp_path / 'gray16.png').mode == 'I;16'
    (tmp_path / 'captions.csv').write_text('file_name,caption\ngray16.png,gray\n')
    dataset = ImageFolderCaptions(str(tmp_path), 'captions.csv',
                                  transform=dict(type='SDImageTransform', resolution=8))
    for image in (dataset[0]['image'], ReferenceImages(str(tmp_path), size=None)[0]['image']):
        assert image.abs().max() < 0.01  # 32768 / 65535 -> 128 / 255, the middle of [-1, 1]


# -- clear messages --------------------------------------------------------------------------

def test_missing_config_names_it_and_the_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, message = exits(capsys, 'train', 'configs/nowhere.py')
    assert status == 1 and 'config configs/nowhere.py does not exist' in message
    assert f'taken from the current directory, {tmp_path})' in message


def test_config_syntax_error_names_the_file(tmp_path, capsys):
    base = tmp_path / 'base.py'
    base.write_text('model = dict(\n    type="ALTER",\n    num_experts=4 target_sparsity=0.35)\n')
    config = tmp_path / 'config.py'
    config.write_text("_base_ = ['base.py']\n")
    status, message = exits(capsys, 'train', config, '--work-dir', tmp_path / 'w')
    assert status == 1 and f'config {base}, line 3: invalid syntax' in message
    assert 'num_experts=4 target_sparsity=0.35)' in message and 'unknown' not in message


@pytest.mark.parametrize('name, content, message', [
    ('prompts.csv', 'caption,id\na cat,1\na dog, sitting,2\n',
     r'prompts\.csv, line 3: 3 fields where the header has 2; quote fields'),
    ('prompts.txt', 'un caf\xe9\n'.encode('latin-1'), r'prompts\.txt is not UTF-8 text'),
    ('captions.json', json.dumps(dict(annotations=[dict(image_id=1, bbox=[0, 0, 1, 1])])),
     r'annotation 0 has no "image_id" and "caption" string'),
    ('captions.json', '{"annotations": [', r'captions\.json is not valid JSON'),
])
def test_bad_prompt_files_are_named(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        load_prompts(path)
    status, error = exits(capsys, 'test', TINY, 'dense', '--prompts', path, '--metrics', 'macs',
                          '--work-dir', tmp_path / 'w')
    assert status == 1 and re.search(message, error) and not (tmp_path / 'w').exists()


@pytest.mark.parametrize('name, content, message', [
    ('captions.jsonl', '{"file_name": "a.png", "caption": "a"}\n{"file_name": \n',
     r"captions file '.*captions\.jsonl' does not parse .*one JSON object per line"),
    ('captions.csv', 'file_name,caption\na.png,un caf\xe9\n'.encode('latin-1'),
     r"captions file '.*captions\.csv' is not UTF-8"),
])
def test_bad_caption_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        ImageFolderCaptions(str(tmp_path), name)


def test_plain_state_dict_given_to_export_is_named(tmp_path, capsys):
    path = tmp_path / 'unet.pth'
    torch.save(build_tiny_unet().state_dict(), path)
    status, message = exits(capsys, 'export', path, '--out', tmp_path / 'out')
    assert status == 1 and f'{path} is a plain state dict' in message
    assert 'export takes an iter_*.pth written by tools/train.py' in message
    assert not (tmp_path / 'out').exists()


def test_checkpoint_of_another_architecture_given_to_test_is_named(tmp_path, capsys):
    unet = build_tiny_unet(cross_attention_dim=64)
    checkpoint = save_checkpoint(tmp_path / 'wide', unet, _dense_experts(unet))
    status, message = exits(capsys, 'test', TINY, checkpoint, '--prompts', 'shapes',
                            '--metrics', 'macs', '--work-dir', tmp_path / 'w')
    assert status == 1
    assert f'the UNet of {checkpoint} is another architecture than model.unet of {TINY}' in message
    assert 'cross_attention_dim: 64 vs 32' in message and not (tmp_path / 'w').exists()
