import pytest
import torch
from mmengine.config import Config

from alter.registry import MODELS

from .conftest import TINY_UNET_CONFIG


def _cfg(**overrides):
    return dict(Config.fromfile(TINY_UNET_CONFIG).model.unet, **overrides)


def test_pretrained_folder_loads_with_diffusers_keys(tmp_path, tiny_unet):
    tiny_unet.save_pretrained(tmp_path / 'pipe' / 'unet')
    loaded = MODELS.build(_cfg(pretrained=str(tmp_path / 'pipe')))
    reference = tiny_unet.state_dict()
    assert list(loaded.state_dict()) == list(reference)
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    # The UNet folder itself works with subfolder=None.
    MODELS.build(_cfg(pretrained=str(tmp_path / 'pipe' / 'unet'), subfolder=None))


def test_missing_pretrained_names_path_and_expectation(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'config\.json at .*nowhere/unet'):
        MODELS.build(_cfg(pretrained=str(tmp_path / 'nowhere')))
    (tmp_path / 'pipe').mkdir()
    with pytest.raises(FileNotFoundError, match="subfolder='unet'"):
        MODELS.build(_cfg(pretrained=str(tmp_path / 'pipe')))


def test_pretrained_of_another_architecture_is_refused(tmp_path, tiny_unet):
    tiny_unet.save_pretrained(tmp_path / 'unet')
    arch = dict(_cfg()['arch'], cross_attention_dim=64)
    with pytest.raises(ValueError, match='cross_attention_dim: config 64 vs weights 32'):
        MODELS.build(_cfg(pretrained=str(tmp_path), arch=arch))


def test_load_weights_false_builds_the_architecture_only(tmp_path):
    unet = MODELS.build(_cfg(pretrained=str(tmp_path / 'absent'), load_weights=False))
    assert list(unet.config.block_out_channels) == [16, 32, 64, 64]
