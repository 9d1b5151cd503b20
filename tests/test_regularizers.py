"""Sparsity regularisers (shared contract + exact values) and the Switch balance loss."""
import math

import pytest
import torch
import torch.nn.functional as F

import alter.models.regularizers  # noqa: F401  (registers the regularisers)
from alter.models.regularizers import balance_loss, routing_smoothness
from alter.registry import REGULARIZERS


def test_registry_holds_the_sparsity_regularizers():
    # Guards the contract test below against running over an empty registry.
    assert {'LogRatio', 'AbsDiff', 'SquaredDiff'} <= set(REGULARIZERS.module_dict)


@pytest.mark.parametrize('target', [0.3, 0.65, 1.0])
@pytest.mark.parametrize('name', sorted(REGULARIZERS.module_dict))
def test_regularizer_contract(name, target):
    reg = REGULARIZERS.build(dict(type=name))
    at_target = reg(torch.tensor(target, dtype=torch.float64), target)
    assert at_target.item() == pytest.approx(0, abs=1e-12)
    for keep in (0.2, 0.5, 0.8, 1.0):
        if keep == target:
            continue
        s = torch.tensor(keep, requires_grad=True)
        loss = reg(s, target)
        assert loss.dim() == 0 and loss.item() > 0
        loss.backward()
        # Gradient descent moves S towards the target.
        assert s.grad.item() * (keep - target) > 0


def test_regularizer_values():
    s, p = torch.tensor(0.5), 0.65
    assert REGULARIZERS.build(dict(type='LogRatio'))(s, p).item() == pytest.approx(
        abs(math.log(0.5) - math.log(0.65)))
    assert REGULARIZERS.build(dict(type='AbsDiff'))(s, p).item() == pytest.approx(0.15)
    assert REGULARIZERS.build(dict(type='SquaredDiff'))(s, p).item() == pytest.approx(0.0225)
    # eps keeps the log ratio finite at S = 0.
    assert math.isfinite(REGULARIZERS.build(dict(type='LogRatio'))(torch.tensor(0.0), p).item())


@pytest.mark.parametrize('name', sorted(REGULARIZERS.module_dict))
def test_regularizers_reject_bad_input(name):
    reg = REGULARIZERS.build(dict(type=name))
    with pytest.raises(ValueError, match=r'scalar keep ratio.*shape \(3,\)'):
        reg(torch.rand(3), 0.65)
    for target in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf'in \(0, 1\], got {target}'):
            reg(torch.tensor(0.5), target)


def one_hot(route: torch.Tensor, num_experts: int) -> torch.Tensor:
    return F.one_hot(route, num_experts).float()


@pytest.mark.parametrize('num_experts', [1, 2, 4, 8])
def test_balance_loss_is_one_for_uniform_and_n_for_collapsed_routing(num_experts):
    route = torch.arange(1000) % num_experts  # uniform
    routing = one_hot(route, num_experts)
    assert balance_loss(routing, routing).item() == pytest.approx(1.0)
    uniform_probs = torch.full((1000, num_experts), 1 / num_experts)
    assert balance_loss(routing, uniform_probs).item() == pytest.approx(1.0)
    collapsed = one_hot(torch.zeros(1000, dtype=torch.long), num_experts)
    assert balance_loss(collapsed, collapsed).item() == pytest.approx(num_experts)
    if num_experts > 1:
        assert balance_loss(collapsed, collapsed) > balance_loss(routing, routing)


def test_balance_loss_is_minimal_for_uniform_routing():
    """With probabilities that agree with the routing, N_E * sum_i F_i^2 >= 1, = 1 iff uniform."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        skew = torch.rand(4, generator=g) * 3  # a random preference for each expert
        route = (torch.randn(1000, 4, generator=g) + skew).argmax(-1)
        routing = one_hot(route, 4)
        assert balance_loss(routing, routing).item() > 1.0 + 1e-4


def test_balance_loss_gradient_flows_through_the_probabilities_only():
    routing = one_hot(torch.tensor([0, 0, 0, 1]), 2).requires_grad_()
    logits = torch.zeros(4, 2, requires_grad=True)
    probs = logits.softmax(-1)
    loss = balance_loss(routing, probs)
    loss.backward()
    assert routing.grad is None or (routing.grad == 0).all()
    # d loss / d P_i(t) = N_E * F_i / T: the over-used expert 0 is pushed down.
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1] < 0).all()


def test_balance_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r'\(T, N_E\).*\(4, 2\) and \(4, 3\)'):
        balance_loss(torch.zeros(4, 2), torch.zeros(4, 3))


def test_routing_smoothness_counts_expert_changes():
    T, num_experts = 1000, 4
    intervals = F.one_hot(torch.arange(T) * num_experts // T, num_experts).float()
    assert routing_smoothness(intervals).item() == pytest.approx((num_experts - 1) / (T - 1))
    alternating = F.one_hot(torch.arange(T) % 2, num_experts).float()
    assert routing_smoothness(alternating).item() == pytest.approx(1.0)
    uniform = torch.full((T, num_experts), 1 / num_experts)
    assert routing_smoothness(uniform).item() == 0
    logits = torch.randn(T, num_experts, requires_grad=True)
    routing_smoothness(logits.softmax(-1)).backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='T >= 2'):
        routing_smoothness(torch.ones(1, num_experts))
