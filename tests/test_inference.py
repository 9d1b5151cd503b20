"""Routed inference: hard-skipped sampling equals the gated blend with the same routing."""
import copy
import json

import pytest
import torch
from diffusers import DDPMScheduler

from alter.inference.experts import (ExpertSet, load_experts, load_unet, save_checkpoint,
                                     weights_fingerprint)
from alter.inference.routing import ExpertRouter
from alter.inference.sampler import SCHEDULERS, build_sampling_scheduler, initial_noise, sample
from alter.registry import PRUNING_SPACES
from alter.units.gating import UnitGating
from alter.units.macs import architecture_key

from .conftest import build_tiny_unet

NOISE = DDPMScheduler(beta_schedule='squaredcos_cap_v2', prediction_type='v_prediction').config


def random_experts(unet, num_experts=3, seed=0, space='paper') -> ExpertSet:
    names = [u.name for u in PRUNING_SPACES.build(dict(type=space)).find(unet)]
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(num_experts, len(names), generator=g) > 0.4).int().tolist()
    route = (torch.arange(1000) * num_experts // 1000).tolist()  # equal intervals
    return ExpertSet.from_dict(dict(
        unit_names=names, expert_masks=masks, routing_table=route, space=space,
        architecture=dict(key=architecture_key(unet)), keep_ratio={},
        weights_fingerprint=weights_fingerprint(unet)))


def gated_blend(unet, experts: ExpertSet, batch: int):
    """The oracle of routed sampling: a copy of ``unet`` whose units all run and are blended
    with the binary gates of each step's expert, and the sampler's ``on_step`` setting them
    for a model batch of ``batch`` (both guidance halves)."""
    oracle = copy.deepcopy(unet)
    gating = UnitGating(PRUNING_SPACES.build(dict(type=experts.space)).find(oracle))

    def on_step(index, timestep, expert):
        mask = torch.tensor(experts.masks[experts.expert_at(timestep)], dtype=torch.float32)
        gating.set_gates(mask.expand(batch, -1))

    return oracle, on_step


@pytest.mark.parametrize('scheduler', sorted(SCHEDULERS))
def test_routed_sampling_equals_gated_blend(scheduler):
    unet = build_tiny_unet()
    experts = random_experts(unet)
    oracle, blend = gated_blend(unet, experts, batch=4)
    router = ExpertRouter(unet, experts)
    noise = initial_noise([1, 2], (12, 16, 16))
    context, uncond = torch.randn(2, 8, 32), torch.zeros(2, 8, 32)
    seen = []
    hard = sample(unet, build_sampling_scheduler(scheduler, NOISE), noise, context, uncond, 7,
                  guidance_scale=2.5, router=router,
                  on_step=lambda i, t, e: seen.append((t, e)))
    soft = sample(oracle, build_sampling_scheduler(scheduler, NOISE), noise, context, uncond, 7,
                  guidance_scale=2.5, on_step=blend)
    assert (hard - soft).abs().max() <= 1e-4
    # Every step ran the expert of its (rounded) timestep, and more than one expert ran.
    assert all(e == experts.route[min(max(round(t), 0), 999)] for t, e in seen)
    assert len({e for _, e in seen}) > 1
    dense = sample(unet, build_sampling_scheduler(scheduler, NOISE), noise, context, uncond, 7,
                   guidance_scale=2.5)
    assert (dense - hard).abs().max() > 1e-3  # the router really skipped units
    assert router.current is None  # back to dense after sampling


def test_non_integer_timesteps_are_rounded_and_off_grid_ones_refused():
    unet = build_tiny_unet()
    experts = random_experts(unet, num_experts=4)
    assert experts.expert_at(249.4) == experts.route[249]
    assert experts.expert_at(249.6) == experts.route[250]
    assert experts.expert_at(-0.4) == experts.route[0]
    assert experts.expert_at(999.4) == experts.route[999]
    for value in (-3.0, 999.5, 1000, 1200, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='off the training grid 0..999'):
            experts.expert_at(value)


def test_checkpoint_round_trip_and_remove(tmp_path, tiny_inputs):
    unet = build_tiny_unet()
    experts = random_experts(unet)
    data = dict(unit_names=list(experts.unit_names), expert_masks=[list(m) for m in experts.masks],
                routing_table=list(experts.route), space='paper',
                architecture=dict(key=architecture_key(unet)), keep_ratio={'fvcore': 0.7})
    save_checkpoint(tmp_path / 'ckpt', unet, data)
    save_checkpoint(tmp_path / 'ckpt', unet, data)  # overwriting an existing checkpoint
    assert sorted(p.name for p in (tmp_path / 'ckpt').iterdir()) == ['experts.json', 'unet']
    assert not list((tmp_path / 'ckpt' / 'unet').glob('*.bin'))  # safetensors only
    loaded, unet2 = load_experts(tmp_path / 'ckpt'), load_unet(tmp_path / 'ckpt')
    assert (loaded.masks, loaded.route, loaded.unit_names) == (experts.masks, experts.route,
                                                           experts.unit_names)
    assert loaded.keep_ratio == {'fvcore': 0.7}
    with torch.no_grad():
        dense = unet2(*tiny_inputs).sample
        router = ExpertRouter(unet2, loaded)
        router.select(500)
        routed = unet2(*tiny_inputs).sample
        router.remove()
        assert torch.equal(unet2(*tiny_inputs).sample, dense)
    assert not torch.allclose(routed, dense)


def test_router_refuses_mismatched_models(tmp_path):
    unet = build_tiny_unet()
    experts = random_experts(unet)
    other = build_tiny_unet()
    other.register_to_config(cross_attention_dim=64)
    with pytest.raises(ValueError, match='another UNet architecture'):
        ExpertRouter(other, experts)
    wrong_space = ExpertSet(experts.unit_names, experts.masks, experts.route, 'shortcut',
                            experts.architecture, {})
    with pytest.raises(ValueError, match='do not match the expert file'):
        ExpertRouter(unet, wrong_space)
    with pytest.raises(TypeError, match='UNet2DConditionModel'):
        ExpertRouter(torch.nn.Linear(2, 2), experts)
    with pytest.raises(FileNotFoundError, match='experts.json'):
        load_experts(tmp_path)
    bad = json.loads(json.dumps(dict(unit_names=['a'], expert_masks=[[1, 0]], routing_table=[0],
                                     space='paper', architecture={})))
    with pytest.raises(ValueError, match='one gate per unit'):
        ExpertSet.from_dict(bad)
