"""Gated execution: hard skip == soft binary gates, ones == dense, remove() restores."""
import copy

import pytest
import torch
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from alter.registry import PRUNING_SPACES
from alter.units.gating import UnitGating

from .conftest import build_tiny_unet

SPACES = ('paper', 'block', 'shortcut')


def _gate(unet, space):
    return UnitGating(PRUNING_SPACES.build(dict(type=space)).find(unet))


def _run(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


@pytest.mark.parametrize('space', SPACES)
def test_all_ones_gates_equal_plain_unet(space, tiny_unet, tiny_inputs):
    plain = copy.deepcopy(tiny_unet)
    gating = _gate(tiny_unet, space)
    with gating.soft(torch.ones(3, len(gating))):
        soft = _run(tiny_unet, tiny_inputs)
    with gating.hard([True] * len(gating)):
        hard = _run(tiny_unet, tiny_inputs)
    dense = _run(plain, tiny_inputs)
    assert torch.equal(soft, dense) and torch.equal(hard, dense)


@pytest.mark.parametrize('space', SPACES)
def test_each_unit_alone_hard_equals_soft(space, tiny_unet, tiny_inputs):
    """Every unit kind and position (down, mid, up; UpBlock2D and CrossAttnUpBlock2D
    skip tensors included), skipped on its own."""
    gating = _gate(tiny_unet, space)
    dense = _run(tiny_unet, tiny_inputs)
    for i, name in enumerate(gating.names):
        keep = [j != i for j in range(len(gating))]
        with gating.hard(keep):
            hard = _run(tiny_unet, tiny_inputs)
        with gating.soft(torch.tensor(keep, dtype=torch.float32).expand(3, -1)):
            soft = _run(tiny_unet, tiny_inputs)
        assert (hard - soft).abs().max() <= 1e-5, name
        assert (hard - dense).abs().max() > 1e-4, f'skipping {name} changed nothing'


@pytest.mark.parametrize('space', SPACES)
def test_random_patterns_hard_equals_soft(space, tiny_unet, tiny_inputs):
    gating = _gate(tiny_unet, space)
    g = torch.Generator().manual_seed(SPACES.index(space))
    for p in (0.2, 0.5, 0.8):
        keep = torch.rand(len(gating), generator=g) > p
        with gating.hard(keep):
            hard = _run(tiny_unet, tiny_inputs)
        with gating.soft(keep.float().expand(3, -1)):
            soft = _run(tiny_unet, tiny_inputs)
        assert (hard - soft).abs().max() <= 1e-5


def test_soft_gates_are_per_sample(tiny_unet, tiny_inputs):
    """Row b of the gates acts on sample b only: a batch with different masks
    equals each sample run alone under its own hard mask."""
    gating = _gate(tiny_unet, 'paper')
    keep = torch.rand(3, len(gating), generator=torch.Generator().manual_seed(3)) > 0.5
    with gating.soft(keep.float()):
        batch = _run(tiny_unet, tiny_inputs)
    for b in range(3):
        with gating.hard(keep[b]):
            alone = _run(tiny_unet, [x[b:b + 1] for x in tiny_inputs])
        assert (batch[b:b + 1] - alone).abs().max() <= 1e-5


def test_fractional_gates_blend_and_carry_gradients(tiny_unet, tiny_inputs):
    gating = _gate(tiny_unet, 'paper')
    gates = torch.full((3, len(gating)), 0.7, requires_grad=True)
    with gating.soft(gates):
        out = tiny_unet(*tiny_inputs).sample
    out.square().mean().backward()
    assert gates.grad is not None and gates.grad.abs().sum() > 0
    assert (gates.grad != 0).all(dim=0).all(), 'every unit should receive a gradient'


def test_gated_off_block_transformer_is_exact_identity(tiny_unet):
    gating = _gate(tiny_unet, 'block')
    index = next(i for i, u in enumerate(gating.units) if isinstance(u.module, Transformer2DModel))
    module = gating.units[index].module
    x = torch.randn(2, module.config.in_channels, 8, 8)
    ctx = torch.randn(2, 8, 32)
    keep = [True] * len(gating)
    keep[index] = False
    with gating.hard(keep):
        assert module(x, encoder_hidden_states=ctx, return_dict=False)[0] is x
        assert torch.equal(module(x, encoder_hidden_states=ctx).sample, x)
    gates = torch.ones(2, len(gating))
    gates[:, index] = 0
    with gating.soft(gates):
        assert torch.equal(module(x, encoder_hidden_states=ctx, return_dict=False)[0], x)


def test_state_dict_keys_unchanged_and_remove_restores(tiny_unet, tiny_inputs):
    plain = build_tiny_unet(seed=1)
    reference_keys = list(plain.state_dict())
    before = _run(tiny_unet, tiny_inputs)
    gating = _gate(tiny_unet, 'shortcut')
    assert list(tiny_unet.state_dict()) == reference_keys
    # Pretrained weights load into the gated UNet without key surgery.
    tiny_unet.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(_run(tiny_unet, tiny_inputs), _run(plain, tiny_inputs))
    tiny_unet.load_state_dict(build_tiny_unet().state_dict(), strict=True)
    gating.set_keep([False] * len(gating))
    gating.remove()
    assert not any('forward' in m.__dict__ for m in tiny_unet.modules())
    assert torch.equal(_run(tiny_unet, tiny_inputs), before)


def test_gate_shape_errors_name_both_lengths(tiny_unet):
    gating = _gate(tiny_unet, 'paper')
    with pytest.raises(ValueError, match=r'length 34.*got length 5'):
        gating.set_keep([True] * 5)
    with pytest.raises(ValueError, match=r'\(batch, 34\).*\(2, 7\)'):
        gating.set_gates(torch.ones(2, 7))
    with pytest.raises(RuntimeError, match='already gated'):
        _gate(tiny_unet, 'paper')


def test_hard_mode_compiles_without_graph_breaks(tiny_unet, tiny_inputs):
    """Per-unit decisions are Python bools: dynamo guards on them, no graph break."""
    gating = _gate(tiny_unet, 'paper')
    gating.set_keep([i % 3 != 0 for i in range(len(gating))])
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(tiny_unet)(*tiny_inputs)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
