"""Routers: the shared contract every registered router runs, and each router's own rule."""
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import Timesteps

import alter.models.routers  # noqa: F401  (registers the routers)
from alter.models.routers import feature_periods
from alter.models.gumbel import gumbel_softmax
from alter.registry import ROUTERS

T = 1000


@pytest.fixture(scope='module')
def features() -> torch.Tensor:
    """(1000, 320) SD2.1's own sinusoidal ``time_proj`` of every training timestep."""
    return Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)(torch.arange(T))


def build(name: str, num_experts: int, features: torch.Tensor):
    torch.manual_seed(0)
    return ROUTERS.build(dict(type=name, num_experts=num_experts, timestep_features=features))


def test_registry_holds_the_paper_variants():
    # Guards the contract test below against running over an empty registry.
    expected = {'HyperNetRouter', 'TableRouter', 'ManualRouter', 'StaticRouter'}
    assert expected <= set(ROUTERS.module_dict)


@pytest.mark.parametrize('num_experts', [1, 2, 4, 8])
@pytest.mark.parametrize('name', sorted(ROUTERS.module_dict))
def test_router_contract(name, num_experts, features):
    router = build(name, num_experts, features)
    everything = torch.arange(T)
    logits = router(everything)
    assert logits.shape == (T, num_experts) and logits.dtype == torch.float32
    assert not logits.isnan().any() and logits.isfinite().any(-1).all()
    route = logits.argmax(-1)
    assert route.min() >= 0 and route.max() < num_experts
    # A timestep's logits do not depend on the batch it comes in.
    batch = torch.tensor([999, 0, 500, 500, 1])
    torch.testing.assert_close(router(batch), logits[batch])
    # -inf logits of fixed routers survive the relaxation and its gradient.
    soft = gumbel_softmax(logits.detach().requires_grad_(), 0.4, True, True,
                          torch.Generator().manual_seed(0))
    assert not soft.isnan().any()

    assert router.learnable == bool(list(router.parameters()))
    if not router.learnable:
        return
    # A few steps towards a routing unlike the initial one (the manual
    # intervals in reverse) change the routing table towards it.
    target = num_experts - 1 - torch.div(everything * num_experts, T, rounding_mode='floor')
    optimizer = torch.optim.Adam(router.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(router(everything), target).backward()
        optimizer.step()
    with torch.no_grad():
        new_route = router(everything).argmax(-1)
    if num_experts == 1:
        assert (new_route == 0).all()
    else:
        assert (new_route != route).any()
        assert (new_route == target).float().mean() > max((route == target).float().mean(), 0.9)


@pytest.mark.parametrize('num_experts', [1, 2, 3, 4, 7, 8, 10])
def test_manual_router_serves_equal_width_intervals(num_experts, features):
    logits = build('ManualRouter', num_experts, features)(torch.arange(T))
    route = logits.argmax(-1)
    for t in range(T):
        # Expert i serves [i T / N_E, (i + 1) T / N_E), in exact arithmetic.
        i = route[t].item()
        assert Fraction(i * T, num_experts) <= t < Fraction((i + 1) * T, num_experts)
    assert set(logits.unique().tolist()) <= {0.0, float('-inf')}
    assert ((logits == 0).sum(-1) == 1).all()
    assert not build('ManualRouter', num_experts, features).learnable


def test_manual_router_intervals_of_four_experts(features):
    route = build('ManualRouter', 4, features)(torch.arange(T)).argmax(-1)
    assert route.bincount().tolist() == [250, 250, 250, 250]
    assert route[249] == 0 and route[250] == 1 and route[999] == 3


@pytest.mark.parametrize('num_experts', [1, 4])
def test_static_router_sends_everything_to_expert_0(num_experts, features):
    router = build('StaticRouter', num_experts, features)
    logits = router(torch.arange(T))
    assert (logits[:, 0] == 0).all()
    assert (logits[:, 1:] == float('-inf')).all()
    assert not router.learnable


def test_table_router_bins_are_equal_width_timestep_ranges(features):
    router = build('TableRouter', 3, features)
    assert router.logits.shape == (T, 3)  # one bin per timestep by default
    binned = ROUTERS.build(dict(type='TableRouter', num_experts=3, timestep_features=features,
                                num_bins=10))
    with torch.no_grad():
        binned.logits.copy_(torch.arange(30.0).view(10, 3))
    logits = binned(torch.arange(T))
    assert torch.equal(logits, binned.logits.detach().repeat_interleave(100, dim=0))
    for num_bins in (0, T + 1):
        with pytest.raises(ValueError, match=rf'num_bins must be in \[1, {T}\].*got {num_bins}'):
            ROUTERS.build(dict(type='TableRouter', num_experts=3, timestep_features=features,
                               num_bins=num_bins))


def test_hypernet_router_keeps_the_features_as_a_buffer(features):
    router = build('HyperNetRouter', 4, features)
    assert 'timestep_features' in router.state_dict()
    assert all(p is not router.timestep_features for p in router.parameters())
    assert torch.equal(router.timestep_features, features)
    assert [m.__class__.__name__ for m in router.mlp] == ['Linear', 'LayerNorm', 'ReLU', 'Linear']
    assert router.mlp[0].in_features == 320 and router.mlp[-1].bias is None


@pytest.mark.parametrize('name', sorted(ROUTERS.module_dict))
def test_routers_reject_bad_arguments(name, features):
    with pytest.raises(ValueError, match='num_experts must be >= 1, got 0'):
        build(name, 0, features)
    with pytest.raises(ValueError, match=r'2-D tensor.*got shape \(1000,\)'):
        build(name, 2, features[:, 0])
    router = build(name, 2, features)
    with pytest.raises(ValueError, match=r'\[0, 1000\), got values in \[0, 1000\]'):
        router(torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match='1-D integer tensor'):
        router(torch.tensor([0.5]))


def test_feature_periods_of_sinusoids(features):
    periods = feature_periods(features)
    # time_proj column i (and i + 160) oscillates with angular frequency 10000^(-i/160).
    true = 2 * math.pi * 10000 ** (torch.arange(160) / 160)
    short = true < T / 10  # many periods fit in T: one crossing more or less is < 5 %
    torch.testing.assert_close(periods[:160][short], true[short], rtol=0.05, atol=0)
    assert (periods[:160][true > 2 * T] >= T).all()  # slower than T: read as very long
    assert feature_periods(torch.arange(T, dtype=torch.float32)[:, None]) == 2 * T  # monotone


def test_slow_router_input_gives_contiguous_routes(features):
    segments = {}
    for min_period in (None, 100):
        torch.manual_seed(0)
        router = ROUTERS.build(dict(type='HyperNetRouter', num_experts=4,
                                    timestep_features=features, min_period=min_period))
        route = router(torch.arange(T)).argmax(-1)
        segments[min_period] = 1 + int((route[1:] != route[:-1]).sum())
    kept = ROUTERS.build(dict(type='HyperNetRouter', num_experts=4, timestep_features=features,
                              min_period=100)).timestep_features.shape[1]
    assert kept < features.shape[1] and kept == int((feature_periods(features) >= 100).sum())
    # The paper's input splits the timesteps into many segments at initialisation.
    assert segments[None] > 50 and segments[100] < 25
    with pytest.raises(ValueError, match='min_period=5000 drops every'):
        ROUTERS.build(dict(type='HyperNetRouter', num_experts=4, timestep_features=features,
                           min_period=5000))
