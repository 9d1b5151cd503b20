"""Your own model in one command: ``model.pretrained`` alone describes the backbone.

A tiny diffusers pipeline folder of another topology than SD2.1's (three levels,
one resnet per level, SD 1.5's scalar head width and conv projections, a VAE that
downsamples by 4, a PNDM scheduler file without ``prediction_type``, as SD 1.5's)
is written with ``save_pretrained``; the SD2.1 configs, given only that folder,
must count, build and train that folder's model.
"""
import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, PNDMScheduler, UNet2DConditionModel

from alter.models.conditioning import CLIPTextEncoder
from alter.registry import MODELS, PRUNING_SPACES
from alter.units.macs import count_module_macs, unit_macs
from alter.utils.cli import InputError
from alter.utils.config import load_config

from .backbone_presets import build_denoiser
from .conftest import ROOT, load_tool
from .test_sd21_smoke import TINY_TEXT, _synthetic_shards

SD21_E4 = f'{ROOT}/configs/alter/sd21_e4_s35.py'
SD21_UNET = f'{ROOT}/configs/_base_/models/sd21_unet.py'
UNET = dict(block_out_channels=(8, 16, 16), layers_per_block=1, attention_head_dim=2,
            down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'),
            up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'),
            cross_attention_dim=TINY_TEXT['hidden_size'], norm_num_groups=4, sample_size=16)
VAE = dict(block_out_channels=(8, 8, 8), down_block_types=('DownEncoderBlock2D', ) * 3,
           up_block_types=('UpDecoderBlock2D', ) * 3, layers_per_block=1, norm_num_groups=4,
           sample_size=64, scaling_factor=0.5)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('own') / 'own-model'
    torch.manual_seed(0)
    UNet2DConditionModel(**UNET).save_pretrained(root / 'unet')
    AutoencoderKL(**VAE).save_pretrained(root / 'vae')
    text = CLIPTextEncoder(load_weights=False, arch=TINY_TEXT)
    text.model.save_pretrained(root / 'text_encoder')
    text.tokenizer.save_pretrained(root / 'tokenizer')
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
                  skip_prk_steps=True, steps_offset=1).save_pretrained(root / 'scheduler')
    schedule = root / 'scheduler' / 'scheduler_config.json'
    config = json.loads(schedule.read_text())
    del config['prediction_type']  # as in SD 1.5's file: PNDM's default (epsilon) applies
    schedule.write_text(json.dumps(config))
    return root


def test_count_macs_counts_the_folders_model_at_its_native_resolution(folder, tmp_path, capsys):
    load_tool('count_macs').main([SD21_UNET, '--out', str(tmp_path / 'macs.json'),
                                  '--cfg-options', f'model.pretrained={folder}'])
    printed = ' '.join(capsys.readouterr().out.split())  # lines wrapped
    data = json.loads((tmp_path / 'macs.json').read_text())
    # Native: the UNet's sample_size 16 x the VAE's 2 ** (3 - 1).
    assert (data['resolution'], data['latent_size']) == (64, [16, 16])
    assert 'model.resolution 64: native (sample_size 16 x latent scale 4)' in printed

    loaded = UNet2DConditionModel.from_pretrained(folder / 'unet').eval()
    units = PRUNING_SPACES.build(dict(type='paper')).find(loaded)
    assert [u['name'] for u in data['units']] == [u.name for u in units]
    assert len(units) == 16 != 34  # SD2.1's topology has 34
    counted = count_module_macs(loaded, (16, 16), 77)['fvcore']  # uncached, on the loaded weights
    assert data['total_macs'] == counted['']
    assert [u['macs'] for u in data['units']] == unit_macs(units, counted)
    assert '16 units (9 res, 7 attn) of a UNet2DConditionModel' in printed
    assert f'largest reachable sparsity {data["prunable_macs"] / data["total_macs"]:.3f}' in printed


def test_the_folder_replaces_the_base_backbone(folder, capsys):
    cfg = load_config(SD21_E4, {'model.pretrained': str(folder)})
    model = cfg.model
    saved = json.loads((folder / 'unet' / 'config.json').read_text())
    assert all(saved[k] == v for k, v in model.unet.arch.items())
    # Keys SD2.1's base sets and this folder leaves at diffusers' defaults take the defaults.
    assert model.unet.arch.upcast_attention is False
    assert model.unet.arch.use_linear_projection is False
    assert model.unet.arch.attention_head_dim == 2 and model.unet.arch.layers_per_block == 1
    assert model.latent_scale == 4
    assert model.noise_scheduler.prediction_type == 'epsilon'  # SD2.1's config: v_prediction
    assert model.noise_scheduler.steps_offset == 1
    # MACs are counted at the training crops (512 px in this config), not the native 64.
    assert model.resolution == 512
    printed = ' '.join(capsys.readouterr().out.split())  # lines wrapped
    assert 'the training crops (train_dataloader.dataset.transform.resolution); native 64' in printed
    assert "scheduler/scheduler_config.json: num_train_timesteps=1000" in printed


def test_what_you_set_wins_over_the_folder(folder, tmp_path, capsys):
    own = tmp_path / 'my_config.py'
    own.write_text(f"_base_ = ['{SD21_E4}']\n"
                   f"model = dict(pretrained='{folder}', resolution=128,\n"
                   "             unet=dict(arch=dict(sample_size=32)))\n")
    cfg = load_config(str(own), {'model.noise_scheduler.prediction_type': 'v_prediction'})
    model = cfg.model
    assert model.resolution == 128 and model.unet.arch.sample_size == 32  # your file
    assert model.noise_scheduler.prediction_type == 'v_prediction'  # your --cfg-options
    assert model.unet.arch.block_out_channels == [8, 16, 16] and model.latent_scale == 4
    printed = ' '.join(capsys.readouterr().out.split())  # lines wrapped
    assert ("kept as set (--cfg-options or the config file itself): "
            "model.unet.arch.sample_size=32, "
            "model.resolution=128, model.noise_scheduler.prediction_type='v_prediction'") in printed


def _json_only_copy(folder, to):
    """The folder's JSON files alone: derivation reads nothing else."""
    for path in folder.rglob('*.json'):
        (to / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, to / path.relative_to(folder))
    return to


@pytest.mark.parametrize('edit, message', [
    (lambda f: (f / 'unet' / 'config.json').write_text('{"block_out_channels": [8,'),
     r'unet/config\.json is not valid JSON \(Expecting value: line 1 column 27'),
    (lambda f: (f / 'unet' / 'config.json').write_text('[8, 16]'),
     r'unet/config\.json holds a JSON list, expected an object'),
    (lambda f: (f / 'vae' / 'config.json').unlink(),
     r'vae/config\.json not found: expected the autoencoder \(VAE\) config'),
    (lambda f: (f / 'vae' / 'config.json').write_text('{"latent_channels": 4}'),
     r'vae/config\.json: expected block_out_channels'),
    (lambda f: (f / 'unet').rename(f / 'transformer'),
     r'unet/config\.json not found, but .*transformer/config\.json describes a '
     r'UNet2DConditionModel'),
])
def test_bad_folder_files_are_named(folder, tmp_path, edit, message):
    copy = _json_only_copy(folder, tmp_path / 'copy')
    edit(copy)
    with pytest.raises(InputError, match=message):
        load_config(SD21_E4, {'model.pretrained': str(copy)})


def test_a_folder_of_another_family_is_refused(tmp_path):
    (tmp_path / 'transformer').mkdir()
    (tmp_path / 'transformer' / 'config.json').write_text(json.dumps(
        dict(_class_name='Transformer2DModel', norm_type='ada_norm_zero', num_layers=2)))
    with pytest.raises(InputError, match='describes a DiTTransformer2DModel; the config builds a '
                       'UNet2DConditionModel'):
        load_config(SD21_E4, {'model.pretrained': str(tmp_path)})
    with pytest.raises(InputError, match='is not a folder'):
        load_config(SD21_E4, {'model.pretrained': str(tmp_path / 'absent')})


def test_train_with_pretrained_alone_prints_the_budget_and_trains(folder, tmp_path, capsys):
    work_dir = tmp_path / 'work'
    options = {
        'model.pretrained': str(folder),
        'model.hypernet_iters': 1,
        'train_dataloader.dataset.shards': _synthetic_shards(tmp_path / 'shards'),
        'train_dataloader.dataset.transform.resolution': 64,
        'train_dataloader.batch_size': 2,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_cfg.max_iters': 2,
        'default_hooks.checkpoint.save_last': False,
    }
    load_tool('train').main([SD21_E4, '--work-dir', str(work_dir), '--cfg-options',
                             *(f'{k}={v}' for k, v in options.items())])
    printed = ' '.join(capsys.readouterr().out.split())  # lines wrapped
    assert 'model.latent_scale 4 from vae/config.json' in printed
    assert "space 'paper': 16 units (9 res, 7 attn) of a UNet2DConditionModel" in printed
    assert 'largest reachable sparsity' in printed and 'target sparsity 0.350' in printed
    experts = json.loads((work_dir / 'experts.json').read_text())
    assert len(experts['unit_names']) == 16 and experts['resolution'] == 64
    assert experts['architecture']['config']['block_out_channels'] == [8, 16, 16]


def test_a_dit_folder_with_the_legacy_class_name_describes_the_dit_config(tmp_path):
    """DiT folders on the hub name ``Transformer2DModel`` (diffusers remaps it by norm_type)."""
    torch.manual_seed(0)
    build_denoiser('dit').save_pretrained(tmp_path / 'transformer')
    AutoencoderKL(**dict(VAE, block_out_channels=(8, ) * 4, down_block_types=(
        'DownEncoderBlock2D', ) * 4, up_block_types=('UpDecoderBlock2D', ) * 4)).save_pretrained(
            tmp_path / 'vae')
    config_file = tmp_path / 'transformer' / 'config.json'
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(dict(config, _class_name='Transformer2DModel')))
    model = load_config(f'{ROOT}/configs/_base_/models/dit_xl2.py',
                        {'model.pretrained': str(tmp_path)}).model
    assert (model.unet.arch.num_layers, model.latent_scale, model.resolution) == (2, 8, 64)
    loaded = MODELS.build(dict(model.unet, pretrained=str(tmp_path)))  # checks arch vs weights
    assert isinstance(loaded, DiTTransformer2DModel)
    assert len(PRUNING_SPACES.build(dict(type='paper')).find(loaded)) == 2


def test_without_an_autoencoder_the_configs_latent_scale_and_resolution_stay(folder, capsys):
    # Training on cached latents (model.autoencoder=None): the folder's VAE does not
    # describe those latents, so the config's pixel geometry is kept; the denoiser is
    # still the folder's.
    base = load_config(SD21_E4, {'model.pretrained': None}).model
    cfg = load_config(SD21_E4, {'model.pretrained': str(folder), 'model.autoencoder': None})
    assert (cfg.model.latent_scale, cfg.model.resolution) == (base.latent_scale, base.resolution)
    assert cfg.model.unet.arch.layers_per_block == 1
    assert 'kept from the config (model.autoencoder=None)' in capsys.readouterr().out
    # The embedded benchmark's cached study runs resolve as configured.
    shapes = load_config(f'{ROOT}/configs/alter/shapes_e4_s35.py',
                         {'model.autoencoder': None, 'model.text_encoder': None})
    assert (shapes.model.latent_scale, shapes.model.resolution) == (4, 32)
