"""The training tools' main paths at CI size: the dense teacher's config with its EMA
through tools/train.py, and tools/export.py's ``--ema``/``--half`` exports loaded back
with ``load_unet`` and routed as in training."""
import os
import stat
import uuid

import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file

from alter.engine.checkpoint import load_checkpoint_file
from alter.engine.run_config import recorded_model_config
from alter.inference.experts import load_experts, load_unet
from alter.inference.routing import ExpertRouter
from alter.registry import MODELS

from .conftest import ROOT, load_tool

TINY = f'{ROOT}/configs/alter/tiny_e4_s35.py'
DENSE = f'{ROOT}/configs/teacher/shapes_dense.py'
# The teacher config's latent cache, of 8 Shapes-T2I renders.
RENDERS = ['train_dataloader.dataset._delete_=True', 'train_dataloader.dataset.type=ShapesT2I',
           'train_dataloader.dataset.num_samples=8']


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name the Shapes VAE by its repository path


def train(config: str, work_dir, *options: str) -> None:
    load_tool('train').main([config, '--work-dir', str(work_dir), '--cfg-options',
                             f'experiment_name={uuid.uuid4().hex}', *options])


def test_dense_teacher_saves_the_ema_its_momentum_gives(tmp_path):
    """Three iterations of configs/teacher/shapes_dense.py with mmengine's EMAHook: each
    checkpoint's weights are the average, ``ema_state_dict`` holds the raw weights, and
    the average moves by ``momentum`` towards each new set after a first copy."""
    momentum = Config.fromfile(DENSE).custom_hooks[0].momentum
    assert momentum == 1e-3
    cache = tmp_path / 'cache'
    load_tool('precompute_cache').main([DENSE, '--out', str(cache), '--shard-size', '8',
                                        '--batch-size', '8', '--cfg-options', *RENDERS])
    # Without the warm-up (lr 1e-5 at first) an EMA step would drown in float32 rounding.
    train(DENSE, tmp_path, f'train_dataloader.dataset.root={cache}',
          'param_scheduler.unet.0.start_factor=1.0',
          'train_dataloader.batch_size=4', 'train_cfg.max_iters=3', 'default_hooks.checkpoint.interval=1',
          'default_hooks.checkpoint.max_keep_ckpts=3')
    ema, raw = [], []
    for i in (1, 2, 3):
        checkpoint = load_checkpoint_file(str(tmp_path / f'iter_{i}.pth'))
        unet = {k: v for k, v in checkpoint['state_dict'].items() if k.startswith('unet.')}
        ema.append(unet)
        raw.append({k: checkpoint['ema_state_dict'][f'module.{k}'] for k in unet})
    assert all(torch.equal(ema[0][k], raw[0][k]) for k in ema[0])  # the first update copies
    for i in (1, 2):  # then lerps: ema_i - ema_{i-1} = m (raw_i - ema_{i-1})
        increment = torch.cat([(ema[i][k].double() - ema[i - 1][k]).flatten() for k in ema[i]])
        expected = momentum * torch.cat([(raw[i][k].double() - ema[i - 1][k]).flatten()
                                         for k in ema[i]])
        # float32 rounding of weights ~0.05 is ~1e-3 of these ~1e-6 increments.
        assert (increment - expected).norm() < 0.02 * expected.norm(), i
    moved = [k for k in raw[0] if not torch.equal(raw[2][k], raw[0][k])]
    assert len(moved) > 0.9 * len(raw[0])  # AdamW moved (nearly) every weight
    assert all(not torch.equal(ema[2][k], raw[2][k]) for k in moved)
    # The export of a teacher checkpoint is its average (tools/export.py without --ema).
    load_tool('export').main([str(tmp_path / 'iter_3.pth'), '--out', str(tmp_path / 'teacher')])
    exported = load_unet(tmp_path / 'teacher').state_dict()
    assert all(torch.equal(exported[k[len('unet.'):]], v) for k, v in ema[2].items())


def test_export_ema_half_is_the_average_in_float16_routed_as_in_training(tmp_path):
    config = tmp_path / 'tiny_ema.py'
    config.write_text(f'_base_ = [{TINY!r}]\ncustom_hooks = [dict(type="ExpertExportHook", '
                      'interval=10), dict(type="UNetEMAHook", momentum=0.5)]\n')
    run = tmp_path / 'run'
    train(str(config), run, 'train_cfg.max_iters=3', 'model.hypernet_iters=2',
          'default_hooks.checkpoint.interval=3')
    checkpoint = load_checkpoint_file(str(run / 'iter_3.pth'))
    average = checkpoint['ema_unet']
    trained = {k[len('unet.'):]: v for k, v in checkpoint['state_dict'].items()
               if k.startswith('unet.')}
    assert set(average) == set(trained)
    assert any(not torch.equal(average[k], trained[k]) for k in average)

    export = load_tool('export').main
    outs = {}
    for name, flags in [('ema_half', ['--ema', '--half']), ('half', ['--half']),
                        ('ema', ['--ema'])]:
        outs[name] = tmp_path / name
        export([str(run / 'iter_3.pth'), '--out', str(outs[name]), *flags])
    # --half: float16 on disk; load_unet gives float32 back. --ema: the average's weights.
    weights_file = next((outs['ema_half'] / 'unet').glob('*.safetensors'))
    stored = load_file(str(weights_file))
    umask = os.umask(0)
    os.umask(umask)
    for path in (outs['ema_half'], outs['ema_half'] / 'unet', weights_file):  # the usual modes
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert {v.dtype for v in load_file(str(next((outs['ema'] / 'unet').glob(
        '*.safetensors')))).values()} == {torch.float32}
    loaded = {name: load_unet(out) for name, out in outs.items()}
    for name, weights in [('ema_half', average), ('half', trained), ('ema', average)]:
        state = loaded[name].state_dict()
        assert next(loaded[name].parameters()).dtype == torch.float32
        cast = torch.float16 if 'half' in name else torch.float32
        assert all(torch.equal(state[k], weights[k].to(cast).float()) for k in weights), name

    # Routed output of the export == the training model's own routed forward (hard table)
    # with the averaged weights in the same precision.
    model = MODELS.build(recorded_model_config(run)).eval()
    model.load_state_dict(checkpoint['state_dict'])
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 12, 16, 16, generator=g), torch.randn(1, 8, 32, generator=g)
    experts = load_experts(outs['ema_half'])
    assert experts.masks == load_experts(outs['half']).masks
    timesteps = [5, 400, 990]
    assert any(not all(experts.masks[experts.expert_at(t)]) for t in timesteps)  # units skipped

    def routed(unet, expert_set):
        router = ExpertRouter(unet, expert_set)
        try:
            outputs = []
            for t in timesteps:
                router.select(t)
                with torch.no_grad():
                    outputs.append(unet(x, torch.tensor([t]), context).sample)
            return torch.cat(outputs)
        finally:
            router.remove()

    def reference(weights, cast):
        model.unet.load_state_dict({k: v.to(cast).float() for k, v in weights.items()})
        with torch.no_grad():
            return torch.cat([model(x, torch.tensor([t]), context) for t in timesteps])

    exported = routed(loaded['ema_half'], experts)
    expected = reference(average, torch.float16)
    assert torch.allclose(exported, expected, rtol=1e-4, atol=1e-5)
    # Without --ema the export routes as the model with its raw weights.
    raw_out = routed(loaded['half'], load_experts(outs['half']))
    assert torch.allclose(raw_out, reference(trained, torch.float16), rtol=1e-4, atol=1e-5)
    # float16 storage costs float16 rounding against the float32 export: far less than
    # the difference the average makes.
    full = routed(loaded['ema'], load_experts(outs['ema']))
    assert torch.allclose(full, reference(average, torch.float32), rtol=1e-4, atol=1e-5)
    rounding = (exported - full).abs().max()
    assert 0 < rounding < 5e-3 * full.abs().max()
    assert (exported - raw_out).abs().max() > 10 * rounding
