"""MAC accounting against independent hand counts on the tiny UNet."""
import json
import subprocess
import sys

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch.utils.flop_counter import FlopCounterMode

import alter.units.macs as macs_module
from alter.registry import PRUNING_SPACES
from alter.units.macs import count_module_macs, mac_table

from .conftest import ROOT, SD21_UNET_CONFIG, TINY_UNET_CONFIG


def _table(unet, space='paper', convention='fvcore', resolution=32):
    units = PRUNING_SPACES.build(dict(type=space)).find(unet)
    return units, mac_table(unet, units, space, resolution, 2, 8, convention)


def test_attention_convention_adds_exactly_the_attention_matmuls(tiny_unet):
    """with_attention - fvcore == sum over attentions of B * Lq * Lk * (inner_q + inner_v),
    computed here from the module shapes and the latent grid alone."""
    _, fv = _table(tiny_unet)
    _, wa = _table(tiny_unet, convention='with_attention')
    expected = 0
    for name, module in tiny_unet.named_modules():
        if isinstance(module, Attention):
            level, block = name.split('.')[0], name.split('.')[1]
            side = {'down_blocks': [16, 8, 4, 2], 'up_blocks': [2, 4, 8, 16]}.get(level)
            hw = 2 if level == 'mid_block' else side[int(block)]
            lq = hw * hw
            lk = lq if name.endswith('attn1') else 8
            expected += lq * lk * (module.to_q.out_features + module.to_v.out_features)
    assert wa.total_macs - fv.total_macs == expected
    assert wa.prunable_macs - fv.prunable_macs == expected  # all attention sits in paper units


def test_shortcut_units_save_the_resnet_minus_its_1x1_conv(tiny_unet):
    units, table = _table(tiny_unet, 'shortcut')
    modules = count_module_macs(tiny_unet, (16, 16), 8)['fvcore']
    checked = 0
    for unit, saved in zip(units, table.unit_macs):
        full = modules[unit.path]
        if unit.bypass == 'shortcut':
            conv = unit.module.conv_shortcut
            hw = {'down.1': 8 * 8, 'down.2': 4 * 4, 'up.2': 8 * 8, 'up.3': 16 * 16}[unit.name.rsplit('.', 2)[0]]
            assert full - saved == conv.in_channels * conv.out_channels * hw
            checked += 1
        else:
            assert saved == full
    assert checked == 4  # SD2.1's pattern: down.1, down.2, up.2, up.3 first resnets


def test_unit_macs_agree_with_torch_flop_counter(tiny_unet):
    """fvcore's per-unit counts against torch's FlopCounterMode (FLOPs / 2), measured here:

    * fvcore also counts normalisation, 5 per normalised element for an affine GroupNorm or
      LayerNorm; torch counts only matmuls and convolutions (resnets have 2 GroupNorms,
      transformer blocks 3 LayerNorms). Neither counts biases, activations or softmax.
    * fvcore skips scaled-dot-product attention (the ``fvcore`` convention);
      ``with_attention`` adds its Q.K^T and A.V matmuls. Torch 2.14 has no formula for the
      CPU SDPA kernel, so the UNet runs here with diffusers' ``AttnProcessor`` (explicit
      baddbmm + bmm), which torch counts.
    So resnets agree under ``fvcore`` and transformer blocks under ``with_attention``:
    exactly once the norms are taken out, and within 4 % as they stand (the norms' share at
    these 16-64 channels; it shrinks as 1 / channels, ~0.2 % at SD2.1's widths).
    """
    units, fv = _table(tiny_unet)
    _, wa = _table(tiny_unet, convention='with_attention')
    tiny_unet.set_attn_processor(AttnProcessor())
    normalised, handles = {}, []
    for path, module in tiny_unet.named_modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            assert module.weight is not None  # affine: fvcore's 5 per element
            handles.append(module.register_forward_hook(
                lambda m, args, out, path=path: normalised.__setitem__(path, out.numel())))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny_unet(torch.randn(1, 12, 16, 16), torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 8, 32))
    for handle in handles:
        handle.remove()
    flops = counter.get_flop_counts()
    for unit, fv_macs, wa_macs in zip(units, fv.unit_macs, wa.unit_macs):
        table_macs = fv_macs if unit.kind == 'res' else wa_macs
        torch_macs = sum(flops[f'{type(tiny_unet).__name__}.{unit.path}'].values()) // 2
        norms = 5 * sum(n for path, n in normalised.items() if path.startswith(unit.path + '.'))
        assert table_macs - norms == torch_macs, unit.name
        assert table_macs == pytest.approx(torch_macs, rel=0.04), unit.name
    assert {unit.kind for unit in units} == {'res', 'attn'}


def test_keep_ratio_counts_the_whole_unet(tiny_unet):
    _, table = _table(tiny_unet)
    n = len(table.unit_macs)
    assert table.keep_ratio(torch.ones(n)).item() == pytest.approx(1.0)
    assert table.keep_ratio(torch.zeros(n)).item() == pytest.approx(table.min_keep_ratio)
    assert 0 < table.min_keep_ratio < 1
    mask = torch.zeros(n)
    mask[3] = 1
    expected = 1 - (table.prunable_macs - table.unit_macs[3]) / table.total_macs
    assert table.keep_ratio(mask).item() == pytest.approx(expected)
    batch = table.keep_ratio(torch.rand(5, n, requires_grad=True))
    assert batch.shape == (5, ) and batch.requires_grad
    with pytest.raises(ValueError, match='34 units'):
        table.keep_ratio(torch.ones(33))


def test_counts_are_cached_per_architecture_and_size(tiny_unet, monkeypatch):
    _, first = _table(tiny_unet)

    def must_not_count(*args, **kwargs):
        raise AssertionError('the cache was not used')

    monkeypatch.setattr(macs_module, 'count_module_macs', must_not_count)
    assert _table(tiny_unet)[1] == first
    assert _table(tiny_unet, convention='with_attention')[1].total_macs > first.total_macs
    with pytest.raises(AssertionError, match='cache was not used'):
        _table(tiny_unet, resolution=64)  # a new size is counted afresh


def test_bad_resolution_and_convention(tiny_unet):
    units = PRUNING_SPACES.build(dict(type='paper')).find(tiny_unet)
    with pytest.raises(ValueError, match='not a multiple'):
        mac_table(tiny_unet, units, 'paper', 33, 2, 8)
    with pytest.raises(ValueError, match='unknown MAC convention'):
        mac_table(tiny_unet, units, 'paper', 32, 2, 8, convention='flops')


def _count_macs_tool(config, out, *args):
    result = subprocess.run(
        [sys.executable, 'tools/count_macs.py', config, '--out', str(out), *args],
        cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout, json.loads(out.read_text())


def test_count_macs_tool_writes_the_json_layout(tmp_path, tiny_unet):
    stdout, data = _count_macs_tool(TINY_UNET_CONFIG, tmp_path / 'macs.json', '--space', 'shortcut')
    assert set(data) >= {'convention', 'resolution', 'total_macs', 'prunable_macs', 'units'}
    assert len(data['units']) == 38 and data['resolution'] == 32
    assert data['prunable_macs'] == sum(u['macs'] for u in data['units'])
    _, table = _table(tiny_unet, 'shortcut')
    assert data['total_macs'] == table.total_macs  # same architecture, same count
    assert '38 units' in stdout and 'up.3.attn.2' in stdout


@pytest.mark.slow
def test_sd21_at_768px_matches_the_paper_convention(tmp_path):
    stdout, data = _count_macs_tool(SD21_UNET_CONFIG, tmp_path / 'sd21.json', '--resolution', '768')
    assert len(data['units']) == 34
    assert data['total_macs'] == pytest.approx(761e9, rel=0.01)
    _, with_attention = _count_macs_tool(SD21_UNET_CONFIG, tmp_path / 'sd21a.json',
                                         '--resolution', '768', '--convention', 'with_attention')
    assert with_attention['total_macs'] == pytest.approx(1075e9, rel=0.01)
