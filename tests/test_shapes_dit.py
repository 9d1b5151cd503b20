"""The embedded benchmark's DiT backbone (configs/_base_/models/shapes_dit.py): its configs,
its teacher and ALTER runs through the tools at a tiny width, export, routed sampling, and
the demo without its teacher."""
import dataclasses
import re
import uuid
from pathlib import Path

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from mmengine.config import Config

from alter.inference.experts import load_experts, load_unet
from alter.inference.pipeline import TextToImage
from alter.inference.routing import ExpertRouter
from alter.inference.sampler import build_sampling_scheduler, initial_noise, sample
from alter.registry import MODELS, PRUNING_SPACES
from alter.units.backbones import backbone_of
from alter.utils.cli import InputError

from .conftest import ROOT, load_tool
from .test_inference import gated_blend

DIT_TEACHER = 'configs/teacher/shapes_dit_dense.py'
DIT_ALTER = 'configs/alter/shapes_dit_e4_s35.py'
# 4 blocks of width 32: the blocks still hold most of the MACs (the budget is reachable).
TINY = ['model.unet.arch.num_layers=4', 'model.unet.arch.num_attention_heads=2',
        'model.unet.arch.attention_head_dim=16', 'model.unet.arch.cross_attention_dim=32']


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name the Shapes VAE and the teachers by repository paths


def _without(cfg: Config, *keys: str) -> dict:
    """The whole config as a dict, without the model's ``keys``."""
    model = cfg.to_dict()
    for key in keys:
        model['model'].pop(key)
    return model


@pytest.mark.parametrize('unet_config, dit_config, denoiser_keys', [
    ('configs/teacher/shapes_dense.py', DIT_TEACHER, ('unet', )),
    ('configs/alter/shapes_e4_s35.py', DIT_ALTER, ('unet', 'pretrained'))])
def test_dit_configs_differ_from_the_unet_ones_in_the_denoiser_alone(unet_config, dit_config,
                                                                      denoiser_keys):
    # The DiT's runs use the UNet's settings throughout (its teacher meets the same budget).
    unet, dit = Config.fromfile(unet_config), Config.fromfile(dit_config)
    assert _without(unet, *denoiser_keys) == _without(dit, *denoiser_keys)
    assert dit.model.unet.model_class == 'PixArtTransformer2DModel'
    assert dit.model.text_encoder.type == 'MiniLMTextEncoder'
    assert dit.model.unet.arch.caption_channels == 384  # MiniLM's states, projected by PixArt


def test_full_size_dit_reads_the_benchmark_latents_and_context():
    model = MODELS.build(Config.fromfile(DIT_TEACHER).model.unet)
    assert isinstance(model, PixArtTransformer2DModel) and not model.use_additional_conditions
    assert 7e6 < sum(p.numel() for p in model.parameters()) < 8e6
    assert len(PRUNING_SPACES.build(dict(type='paper')).find(model)) == 12
    with torch.no_grad():  # 4x8x8 latents and 24 MiniLM states in, the v-prediction out
        out = backbone_of(model).predict(model, torch.randn(2, 4, 8, 8), torch.tensor([10, 900]),
                                         torch.randn(2, 24, 384))
    assert out.shape == (2, 4, 8, 8)


def _train(config: str, work_dir, *options: str) -> None:
    load_tool('train').main([config, '--work-dir', str(work_dir), '--cfg-options', *TINY,
                             f'experiment_name={uuid.uuid4().hex}', *options])


def _export(run, out) -> None:
    load_tool('export').main([str(run / 'iter_3.pth'), '--half', '--out', str(out)])


def test_teacher_then_alter_train_export_and_sample_routed(tmp_path):
    # The teacher trains on a latent cache, as configs/teacher/shapes_dit_dense.py says.
    cache = tmp_path / 'cache'
    load_tool('precompute_cache').main([
        DIT_TEACHER, '--out', str(cache), '--shard-size', '8', '--batch-size', '8',
        '--cfg-options', 'train_dataloader.dataset._delete_=True',
        'train_dataloader.dataset.type=ShapesT2I', 'train_dataloader.dataset.num_samples=8'])
    _train(DIT_TEACHER, tmp_path / 'teacher_run', f'train_dataloader.dataset.root={cache}',
           'train_dataloader.batch_size=4', 'train_cfg.max_iters=3',
           'default_hooks.checkpoint.interval=3')
    teacher = tmp_path / 'shapes_dit_teacher'
    _export(tmp_path / 'teacher_run', teacher)
    assert not (teacher / 'unet').exists() and not (teacher / 'experts.json').exists()
    dense = load_unet(teacher)
    assert isinstance(dense, PixArtTransformer2DModel) and dense.config.num_layers == 4

    # ALTER from that teacher: a hypernetwork step, then UNet steps, then export.
    _train(DIT_ALTER, tmp_path / 'alter_run', f'model.pretrained={teacher}',
           'train_dataloader.batch_size=4', 'train_cfg.max_iters=3', 'model.hypernet_iters=2',
           'default_hooks.checkpoint.interval=3')
    student_dir = tmp_path / 'alter'
    _export(tmp_path / 'alter_run', student_dir)
    experts, student = load_experts(student_dir), load_unet(student_dir).eval()
    assert experts.unit_names == tuple(f'block.{i}' for i in range(4))
    assert isinstance(student, PixArtTransformer2DModel)

    # Experts that really skip, each on its own quarter of the timesteps.
    experts = dataclasses.replace(
        experts, masks=((1, 0, 1, 1), (0, 1, 1, 0), (1, 1, 0, 1), (1, 1, 1, 1)),
        route=tuple(t * 4 // 1000 for t in range(1000)))
    cfg = Config.fromfile(DIT_ALTER)
    autoencoder = MODELS.build(cfg.model.autoencoder).eval()
    text_encoder = MODELS.build(cfg.model.text_encoder)
    noise_config = dict(cfg.model.noise_scheduler)
    captions, seeds = ['a red circle', 'a blue square above a green triangle'], [0, 1]
    context, uncond = text_encoder(captions), text_encoder([''] * 2)
    oracle, blend = gated_blend(student, experts, batch=4)
    seen = []

    def on_step(index, timestep, expert):
        seen.append(experts.expert_at(timestep))
        blend(index, timestep, expert)

    for scheduler in ('ddim', 'euler'):  # integer and fractional timesteps
        router = ExpertRouter(student, experts)
        routed = TextToImage(student, autoencoder, text_encoder, noise_config, (8, 8), router)
        hard = routed(captions, seeds, 3, scheduler=scheduler, progress=False)
        router.remove()
        seen.clear()
        with torch.no_grad():
            latents = sample(oracle, build_sampling_scheduler(scheduler, noise_config),
                             initial_noise(seeds, (4, 8, 8)), context, uncond, 3, 3.0,
                             on_step=on_step)
            soft = autoencoder.decode(latents).clamp(-1, 1)
        assert hard.shape == (2, 3, 32, 32)
        assert (hard - soft).abs().max() <= 1e-4
        assert len(set(seen)) > 1  # more than one expert ran
        dense = TextToImage(student, autoencoder, text_encoder, noise_config, (8, 8))(
            captions, seeds, 3, scheduler=scheduler, progress=False)
        assert (dense - hard).abs().max() > 1e-3  # the skipped blocks really were skipped


def _header_commands(config: str) -> str:
    """The comment lines of a config's header, continuation lines joined."""
    lines = []
    for line in open(config).read().splitlines():
        if not line.startswith('#'):
            break
        lines.append(line.lstrip('# ').rstrip())
    return re.sub(r'\s*\\\s*', ' ', ' '.join(lines))


def test_demo_without_the_dit_teacher_names_it_and_the_commands_that_make_it(tmp_path):
    demo = load_tool('demo')
    missing = tmp_path / 'shapes_dit_teacher'
    with pytest.raises(InputError) as error:
        demo.main(['--backbone', 'dit', '--work-dir', str(tmp_path / 'demo'),
                   '--cfg-options', f'model.pretrained={missing}'])
    message = str(error.value)
    assert f'the dense teacher {missing}/' in message and DIT_ALTER in message
    assert ('python tools/train.py configs/teacher/shapes_dit_dense.py --work-dir '
            'work_dirs/shapes_dit_teacher') in message
    assert (f'python tools/export.py work_dirs/shapes_dit_teacher/iter_12000.pth --half --out '
            f'{missing}') in message
    assert not (tmp_path / 'demo').exists()  # stopped before training anything
    # The commands the demo prints are the ones each teacher config's header gives.
    for alter_config, teacher_config, shipped in demo.BACKBONES.values():
        assert not shipped or Path(ROOT, shipped, 'experts.json').is_file()
        pretrained = Config.fromfile(alter_config).model.pretrained
        for command in demo.teacher_commands(teacher_config, pretrained):
            assert command in _header_commands(teacher_config)
