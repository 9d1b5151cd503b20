import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from mmengine.config import Config
from torch import nn

from alter.registry import PRUNING_SPACES

from .conftest import SD21_UNET_CONFIG


@pytest.fixture(scope='module')
def sd21_meta_unet():
    """SD2.1's UNet on the meta device: its real module tree, no memory, no weights."""
    with torch.device('meta'):
        return UNet2DConditionModel(**Config.fromfile(SD21_UNET_CONFIG).model.unet.arch)


def _find(space, unet):
    return PRUNING_SPACES.build(dict(type=space)).find(unet)


def test_sd21_paper_space_has_34_units(sd21_meta_unet):
    units = _find('paper', sd21_meta_unet)
    assert len(units) == 34
    assert sum(u.kind == 'attn' for u in units) == 16
    assert sum(u.kind == 'res' for u in units) == 18
    assert all(isinstance(u.module, BasicTransformerBlock) for u in units if u.kind == 'attn')
    # The channel-changing first resnets of down1/down2 and up2/up3 are never prunable.
    names = {u.name for u in units}
    assert not names & {'down.1.res.0', 'down.2.res.0', 'up.2.res.0', 'up.3.res.0'}
    assert {'down.0.res.0', 'mid.attn.0', 'up.0.res.0', 'up.3.attn.2'} <= names


def test_sd21_block_and_shortcut_spaces(sd21_meta_unet):
    block = _find('block', sd21_meta_unet)
    assert len(block) == 34
    assert all(isinstance(u.module, Transformer2DModel) for u in block if u.kind == 'attn')
    shortcut = _find('shortcut', sd21_meta_unet)
    assert len(shortcut) == 38
    changed = [u for u in shortcut if u.bypass == 'shortcut']
    assert [u.name for u in changed] == ['down.1.res.0', 'down.2.res.0', 'up.2.res.0', 'up.3.res.0']
    assert all(u.module.conv_shortcut is not None for u in changed)


def test_units_follow_execution_order(tiny_unet):
    """The documented order is the order the UNet runs its units."""
    units = _find('shortcut', tiny_unet)
    order = []
    hooks = [u.module.register_forward_pre_hook(lambda m, a, name=u.name: order.append(name))
             for u in units]
    tiny_unet(torch.randn(1, 12, 16, 16), 5, torch.randn(1, 8, 32))
    for h in hooks:
        h.remove()
    assert order == [u.name for u in units]
    assert len({u.name for u in units}) == len(units)


def test_up_resnets_bypass_by_dropping_the_skip_tensor(sd21_meta_unet):
    for unit in _find('paper', sd21_meta_unet):
        if unit.name.startswith('up.') and unit.kind == 'res':
            assert unit.bypass == 'slice'
            assert isinstance(unit.module, ResnetBlock2D)
            assert unit.keep_channels == unit.module.out_channels < unit.module.in_channels
        elif unit.kind == 'res':
            assert unit.bypass == 'identity'
            assert unit.module.in_channels == unit.module.out_channels


def test_deeper_transformers_get_one_unit_per_block():
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=8,
        down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
        up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'), transformer_layers_per_block=2,
        attention_head_dim=2, sample_size=8)
    names = [u.name for u in _find('paper', unet) if u.kind == 'attn']
    assert names[:2] == ['down.0.attn.0.0', 'down.0.attn.0.1']


def test_space_without_units_names_the_model(tiny_unet):
    tiny_unet.down_blocks, tiny_unet.up_blocks = nn.ModuleList(), nn.ModuleList()
    tiny_unet.mid_block = None
    with pytest.raises(ValueError, match='found no units in UNet2DConditionModel'):
        _find('paper', tiny_unet)


def test_space_rejects_other_models():
    with pytest.raises(TypeError, match='UNet2DConditionModel, got Linear'):
        _find('paper', nn.Linear(2, 2))
