"""The hypernetwork: Gumbel relaxations, expert generators and ``HyperNetwork``."""
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import Timesteps

import alter.models.experts  # noqa: F401  (registers the expert generators)
from alter.models.gumbel import gumbel_sigmoid, gumbel_softmax
from alter.models.hypernet import HyperNetwork
from alter.models.regularizers import LogRatio, balance_loss
from alter.registry import EXPERT_GENERATORS
from alter.units.macs import MacTable

N_L = 6
T = 1000


@pytest.fixture(scope='module')
def features() -> torch.Tensor:
    """(1000, 320) SD2.1's own sinusoidal ``time_proj`` of every training timestep."""
    return Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)(torch.arange(T))


def build(features: torch.Tensor, num_experts: int = 4, seed: int = 0, **kwargs) -> HyperNetwork:
    torch.manual_seed(seed)
    return HyperNetwork(N_L, num_experts, features, **kwargs)


def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


# Gumbel relaxations ----------------------------------------------------------


def test_straight_through_forward_is_exactly_binary():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=g) * 3
    for tau in (0.1, 0.4, 1.0):
        gates = gumbel_sigmoid(logits, tau, hard=True, noise=True, generator=g)
        assert is_binary(gates) and 0 < gates.mean() < 1
        routes = gumbel_softmax(logits, tau, hard=True, noise=True, generator=g)
        assert is_binary(routes) and (routes.sum(-1) == 1).all()


def test_straight_through_backward_is_the_soft_gradient():
    logits = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(50, 5, generator=torch.Generator().manual_seed(1))
    for relax in (gumbel_sigmoid, gumbel_softmax):
        grads = []
        for hard in (True, False):
            x = logits.clone().requires_grad_()
            (relax(x, 0.4, hard, True, torch.Generator().manual_seed(2)) * weights).sum().backward()
            grads.append(x.grad)
        torch.testing.assert_close(grads[0], grads[1])
        assert grads[0].abs().sum() > 0


def test_soft_relaxation_is_strictly_inside_0_1():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=g)
    gates = gumbel_sigmoid(logits, 1.0, hard=False, noise=True, generator=g)
    routes = gumbel_softmax(logits, 1.0, hard=False, noise=True, generator=g)
    for y in (gates, routes):
        assert ((y > 0) & (y < 1)).all()
    torch.testing.assert_close(routes.sum(-1), torch.ones(200))


def test_noise_free_decisions_are_the_sign_and_the_argmax():
    logits = torch.tensor([[-0.3, 0.2, 0.1], [2.0, -1.0, 5.0]])
    assert torch.equal(gumbel_sigmoid(logits, 0.4, True, False), (logits > 0).float())
    assert torch.equal(gumbel_softmax(logits, 0.4, True, False),
                       torch.tensor([[0., 1., 0.], [0., 0., 1.]]))


def test_hard_decisions_follow_the_logit_probabilities():
    """P(gate = 1) = sigmoid(logit) and P(route = i) = softmax(logits)_i, at any tau."""
    g = torch.Generator().manual_seed(0)
    gate_logits = torch.tensor([-2.0, 0.0, 1.0]).expand(20000, 3)
    frequency = gumbel_sigmoid(gate_logits, 0.4, True, True, g).mean(0)
    torch.testing.assert_close(frequency, torch.sigmoid(gate_logits[0]), atol=0.015, rtol=0)
    route_logits = torch.tensor([1.0, 0.0, -1.0, float('-inf')]).expand(20000, 4)
    frequency = gumbel_softmax(route_logits, 0.4, True, True, g).mean(0)
    torch.testing.assert_close(frequency, torch.softmax(route_logits[0], -1), atol=0.015, rtol=0)


def test_soft_values_are_the_tempered_relaxation():
    logits = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    for tau in (0.4, 2.0):
        torch.testing.assert_close(gumbel_sigmoid(logits, tau, False, False),
                                   torch.sigmoid(logits / tau))
        torch.testing.assert_close(gumbel_softmax(logits, tau, False, False),
                                   torch.softmax(logits / tau, -1))


def test_extreme_uniform_draws_give_finite_noise(monkeypatch):
    # torch.rand may return exactly 0; that must not become infinite noise,
    # which would override finite logits (and make a fixed router's row NaN).
    monkeypatch.setattr(torch, 'rand', lambda shape, generator, dtype, device: torch.zeros(
        shape, dtype=dtype, device=device))
    logits = torch.tensor([[0.0, float('-inf')], [3.0, -3.0]])
    assert gumbel_sigmoid(logits[1], 0.4, False, True).isfinite().all()
    routes = gumbel_softmax(logits, 0.4, True, True)
    assert torch.equal(routes, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


def test_noise_is_added_before_the_temperature():
    # Hard decisions depend on logits + noise only, not on tau.
    logits = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    for relax in (gumbel_sigmoid, gumbel_softmax):
        a = relax(logits, 0.1, True, True, torch.Generator().manual_seed(3))
        b = relax(logits, 5.0, True, True, torch.Generator().manual_seed(3))
        assert torch.equal(a, b)


@pytest.mark.parametrize('hard', [True, False])
@pytest.mark.parametrize('noise', [True, False])
def test_minus_inf_logits_give_no_nan(hard, noise):
    logits = torch.tensor([[0.0, float('-inf'), float('-inf')],
                           [float('-inf'), 1.5, -2.0]], requires_grad=True)
    y = gumbel_softmax(logits, 0.4, hard, noise, torch.Generator().manual_seed(0))
    assert not y.isnan().any()
    assert torch.equal(y[0].detach(), torch.tensor([1.0, 0.0, 0.0]))
    assert y[1, 0] == 0
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert logits.grad.isfinite().all()


# Expert generators --------------------------------------------------------------


def test_registry_holds_the_expert_generators():
    # Guards the contract test below against running over an empty registry.
    assert {'HyperExperts', 'LearnedExperts'} <= set(EXPERT_GENERATORS.module_dict)


@pytest.mark.parametrize('num_experts', [1, 2, 4, 8])
@pytest.mark.parametrize('name', sorted(EXPERT_GENERATORS.module_dict))
def test_expert_generator_contract(name, num_experts):
    torch.manual_seed(0)
    gen = EXPERT_GENERATORS.build(dict(type=name, num_experts=num_experts, num_units=N_L))
    logits = gen().detach().clone()  # LearnedExperts returns its parameter
    assert logits.shape == (num_experts, N_L) and logits.dtype == torch.float32
    # Around 0 at initialisation: with the offset 4 every gate starts at 1.
    assert logits.abs().max() < 3
    # A few steps towards a target pattern move every logit towards its sign.
    target = torch.arange(num_experts * N_L).view(num_experts, N_L) % 3 == 0
    optimizer = torch.optim.Adam(gen.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(gen(), target.float()).backward()
        optimizer.step()
    with torch.no_grad():
        moved = gen() - logits
    assert (moved[target] > 0).all() and (moved[~target] < 0).all()


def test_hyper_experts_embeddings_are_frozen_and_orthogonal():
    gen = EXPERT_GENERATORS.build(dict(type='HyperExperts', num_experts=2, num_units=N_L))
    z = gen.embeddings
    assert z.shape == (2, N_L, 64) and not z.requires_grad
    assert 'embeddings' in gen.state_dict()
    assert all(p is not z for p in gen.parameters())
    flat = z.reshape(-1, 64)  # 12 embeddings of 64-d: orthonormal rows
    torch.testing.assert_close(flat @ flat.T, torch.eye(2 * N_L), atol=1e-5, rtol=0)
    many = EXPERT_GENERATORS.build(dict(type='HyperExperts', num_experts=10, num_units=34))
    flat = many.embeddings.reshape(-1, 64)  # 340 embeddings of 64-d: orthonormal columns
    torch.testing.assert_close(flat.T @ flat, torch.eye(64), atol=1e-5, rtol=0)
    assert [m.__class__.__name__ for m in gen.mlp] == ['Linear', 'LayerNorm', 'ReLU', 'Linear']
    assert gen.mlp[0].out_features == 256 and gen.mlp[-1].bias is None


# HyperNetwork -------------------------------------------------------------------


@pytest.mark.parametrize('estimator', ['straight_through', 'soft'])
def test_gradients_reach_every_hypernetwork_parameter(estimator, features):
    hypernet = build(features, estimator=estimator).train()
    out = hypernet(torch.Generator().manual_seed(0))
    weights = torch.randn(T, N_L, generator=torch.Generator().manual_seed(1))
    (out.timestep_masks * weights).sum().backward()
    for name, p in hypernet.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name
        assert p.grad.abs().sum() > 0, name
    assert {n.split('.')[0] for n, _ in hypernet.named_parameters()} == {'experts', 'router'}


def test_eval_mode_is_deterministic(features):
    hypernet = build(features).eval()
    a, b = hypernet(torch.Generator().manual_seed(0)), hypernet(torch.Generator().manual_seed(1))
    assert torch.equal(a.expert_masks, b.expert_masks) and torch.equal(a.routing, b.routing)
    assert torch.equal(a.timestep_masks, b.timestep_masks)
    masks, route = hypernet.table()
    assert torch.equal(masks, hypernet.table()[0]) and torch.equal(route, hypernet.table()[1])
    # table() is the eval decision, in any mode.
    assert torch.equal(masks, a.expert_masks.bool()) and torch.equal(route, a.routing.argmax(-1))
    hypernet.train()
    assert torch.equal(hypernet.table()[0], masks) and torch.equal(hypernet.table()[1], route)
    assert masks.dtype == torch.bool and route.dtype == torch.long and route.shape == (T, )


def test_eval_rule_is_logit_plus_offset_above_0(features):
    hypernet = build(features, expert_generator=dict(type='LearnedExperts')).eval()
    with torch.no_grad():
        hypernet.experts.logits.copy_(torch.tensor([-4.1, -3.9, 0.0, 7.0, -10.0, -4.0]))
    expected = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert torch.equal(hypernet().expert_masks, expected.expand(4, N_L))
    assert torch.equal(hypernet.table()[0], expected.bool().expand(4, N_L))


@pytest.mark.parametrize('generator', ['HyperExperts', 'LearnedExperts'])
def test_every_gate_starts_at_1(generator, features):
    hypernet = build(features, num_experts=8, expert_generator=dict(type=generator)).eval()
    assert (hypernet().expert_masks == 1).all() and (hypernet().timestep_masks == 1).all()
    assert hypernet.table()[0].all()


def test_train_mode_samples_binary_masks_and_one_hot_routing(features):
    hypernet = build(features).train()
    out = hypernet(torch.Generator().manual_seed(0))
    assert out.expert_masks.shape == (4, N_L) and out.routing.shape == (T, 4)
    assert out.route_probs.shape == (T, 4) and out.timestep_masks.shape == (T, N_L)
    assert is_binary(out.expert_masks) and is_binary(out.routing)
    assert (out.routing.sum(-1) == 1).all()
    # m_t = s_t . M: each timestep gets its routed expert's mask.
    assert torch.equal(out.timestep_masks, out.expert_masks[out.routing.argmax(-1)])
    # The noise makes routes differ from the noise-free argmax somewhere.
    assert (out.routing.argmax(-1) != hypernet.table()[1]).any()
    # route_probs are noise-free: the tempered softmax of the router logits.
    expected = torch.softmax(hypernet.router(torch.arange(T)) / hypernet.route_tau, -1)
    torch.testing.assert_close(out.route_probs, expected)


@pytest.mark.parametrize('estimator', ['straight_through', 'soft'])
def test_train_draw_is_the_documented_relaxation(estimator, features):
    """M = gumbel_sigmoid(L + b_g, tau_g), s = gumbel_softmax(router(t), tau_r), one generator."""
    hypernet = build(features, gate_offset=1.0, gate_tau=0.7, route_tau=1.3,
                     estimator=estimator).train()
    out = hypernet(torch.Generator().manual_seed(0))
    g, hard = torch.Generator().manual_seed(0), estimator == 'straight_through'
    masks = gumbel_sigmoid(hypernet.experts() + 1.0, 0.7, hard, True, g)
    routing = gumbel_softmax(hypernet.router(torch.arange(T)), 1.3, hard, True, g)
    torch.testing.assert_close(out.expert_masks, masks)
    torch.testing.assert_close(out.routing, routing)
    torch.testing.assert_close(out.timestep_masks, routing @ masks)


def test_generator_makes_train_draws_reproducible(features):
    hypernet = build(features).train()
    a = hypernet(torch.Generator().manual_seed(5))
    b = hypernet(torch.Generator().manual_seed(5))
    c = hypernet(torch.Generator().manual_seed(6))
    assert torch.equal(a.timestep_masks, b.timestep_masks) and torch.equal(a.routing, b.routing)
    assert not torch.equal(a.routing, c.routing)


@pytest.mark.parametrize('estimator', ['straight_through', 'soft'])
def test_sampling_is_float32_under_bfloat16_autocast(estimator, features):
    """AMP must not move the Gumbel draws or the masks to half precision: under
    autocast the draw is the float32 draw, bit for bit."""
    hypernet = build(features, estimator=estimator).train()
    reference = hypernet(torch.Generator().manual_seed(5))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = hypernet(torch.Generator().manual_seed(5))
    for name in ('expert_masks', 'routing', 'route_probs', 'timestep_masks'):
        assert getattr(amp, name).dtype == torch.float32, name
        assert torch.equal(getattr(amp, name), getattr(reference, name)), name


def test_soft_estimator_gives_values_strictly_inside_0_1(features):
    # Offset 0 and tau 1 keep float32 sigmoids away from saturating at exactly 1.
    hypernet = build(features, estimator='soft', gate_offset=0.0, gate_tau=1.0,
                     route_tau=1.0).train()
    out = hypernet(torch.Generator().manual_seed(0))
    for y in (out.expert_masks, out.routing, out.timestep_masks):
        assert ((y > 0) & (y < 1)).all()
    # Eval mode stays hard with the soft estimator.
    assert is_binary(hypernet.eval()().expert_masks)


@pytest.mark.parametrize('estimator', ['straight_through', 'soft'])
def test_fixed_routers_route_exactly_despite_noise(estimator, features):
    hypernet = build(features, router=dict(type='ManualRouter'), estimator=estimator).train()
    out = hypernet(torch.Generator().manual_seed(0))
    manual = torch.arange(T) * 4 // T
    assert torch.equal(out.routing, F.one_hot(manual, 4).float())
    assert torch.equal(out.route_probs, out.routing)
    assert balance_loss(out.routing, out.route_probs).item() == pytest.approx(1.0)
    out.timestep_masks.sum().backward()
    assert all(p.grad.isfinite().all() for p in hypernet.parameters())
    assert not hypernet.router.learnable


def test_sparsity_loss_prunes_units(features):
    """L_ratio alone, on the MAC-weighted keep ratio of the timestep masks, prunes units."""
    table = MacTable(convention='fvcore', resolution=32, latent_size=(16, 16), context_length=8,
                     space='paper', total_macs=1000, unit_names=[f'u{i}' for i in range(N_L)],
                     unit_kinds=['res'] * N_L, unit_macs=[100, 150, 50, 200, 100, 100])
    hypernet = build(features, num_experts=2)
    optimizer = torch.optim.AdamW(hypernet.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)

    def keep_of_table() -> torch.Tensor:
        return table.keep_ratio(hypernet.table()[0].float())  # (N_E,)

    assert (keep_of_table() == 1).all()
    for _ in range(20):
        keep = table.keep_ratio(hypernet.train()(g).timestep_masks).mean()
        optimizer.zero_grad()
        LogRatio()(keep, 0.6).backward()
        optimizer.step()
    assert (keep_of_table() < 0.9).any()


def test_hypernetwork_rejects_bad_arguments(features):
    with pytest.raises(ValueError, match='num_experts must be >= 1, got 0'):
        HyperNetwork(N_L, 0, features)
    with pytest.raises(ValueError, match='num_units must be >= 1, got 0'):
        HyperNetwork(0, 2, features)
    with pytest.raises(ValueError, match=r'2-D tensor.*got shape \(1000,\)'):
        HyperNetwork(N_L, 2, features[:, 0])
    with pytest.raises(ValueError, match=r"unknown estimator 'gumbel'.*'straight_through', 'soft'"):
        HyperNetwork(N_L, 2, features, estimator='gumbel')
    with pytest.raises(ValueError, match='gate_tau=0'):
        HyperNetwork(N_L, 2, features, gate_tau=0)
    with pytest.raises(ValueError, match=r"router config must not set \['num_experts'\]"):
        HyperNetwork(N_L, 2, features, router=dict(type='TableRouter', num_experts=3))
    with pytest.raises(KeyError, match='HyperNetRouter'):
        HyperNetwork(N_L, 2, features, router=dict(type='HypernetRouter'))


def test_state_dict_round_trips_strictly(features):
    hypernet = build(features, seed=0)
    other = build(features, seed=1)
    assert not torch.equal(hypernet.table()[1], other.table()[1])
    other.load_state_dict(hypernet.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(hypernet.table(), other.table()))
    assert 'timesteps' not in hypernet.state_dict()  # derived, not saved
