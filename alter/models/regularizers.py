"""Hypernetwork regularisers: sparsity (L_ratio) and load balance (L_balance), ALTER_SPEC §5.

Sparsity contract: ``REGULARIZERS.build(dict(type=...))`` gives a callable
``reg(keep, target_keep) -> loss``, where ``keep`` is the scalar keep ratio
S(m) (MAC-weighted kept fraction of the whole UNet, averaged over the
training timesteps, e.g. ``MacTable.keep_ratio(timestep_masks).mean()``) and
``target_keep`` is p = 1 - s. Every loss is 0 at S = p and grows away from it.
"""
import math

import torch

from alter.registry import REGULARIZERS


class SparsityRegularizer:
    """Base of the sparsity regularisers: checks the inputs, then ``penalty``."""

    def __call__(self, keep: torch.Tensor, target_keep: float) -> torch.Tensor:
        """Scalar keep ratio S and target p in (0, 1] -> scalar loss."""
        if keep.dim() != 0:
            raise ValueError('keep must be the scalar keep ratio S(m) (average it over timesteps '
                             f'first), got shape {tuple(keep.shape)}')
        if not 0.0 < target_keep <= 1.0:
            raise ValueError(f'target_keep p must be in (0, 1], got {target_keep}')
        return self.penalty(keep, target_keep)

    def penalty(self, keep: torch.Tensor, target_keep: float) -> torch.Tensor:
        raise NotImplementedError


@REGULARIZERS.register_module()
class LogRatio(SparsityRegularizer):
    """``|log(S + eps) - log(p + eps)|`` (the paper's L_ratio)."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def penalty(self, keep: torch.Tensor, target_keep: float) -> torch.Tensor:
        return (torch.log(keep + self.eps) - math.log(target_keep + self.eps)).abs()


@REGULARIZERS.register_module()
class AbsDiff(SparsityRegularizer):
    """``|S - p|``."""

    def penalty(self, keep: torch.Tensor, target_keep: float) -> torch.Tensor:
        return (keep - target_keep).abs()


@REGULARIZERS.register_module()
class SquaredDiff(SparsityRegularizer):
    """``(S - p)^2``."""

    def penalty(self, keep: torch.Tensor, target_keep: float) -> torch.Tensor:
        return (keep - target_keep)**2


def balance_loss(routing: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load balance ``N_E * sum_i F_i * P_i``.

    F_i, the fraction of timesteps routed to expert i, is a count and carries
    no gradient (as in Switch); the gradient flows through P_i, the mean router
    probability of expert i. Equals 1 for uniform routing, N_E when collapsed.

    Args:
        routing: (T, N_E) one-hot routing of the timesteps.
        probs: (T, N_E) router probabilities (softmax, no noise).
    Returns:
        scalar loss.
    """
    if routing.dim() != 2 or routing.shape != probs.shape:
        raise ValueError('routing and probs must both be (T, N_E), got shapes '
                         f'{tuple(routing.shape)} and {tuple(probs.shape)}')
    fraction = routing.detach().mean(0)
    return routing.shape[1] * (fraction * probs.mean(0)).sum()


def routing_smoothness(probs: torch.Tensor) -> torch.Tensor:
    """Total variation of the routing over neighbouring timesteps,
    ``mean_t 0.5 * ||P_{t+1} - P_t||_1`` in [0, 1].

    0 when neighbouring timesteps have the same route probabilities; with
    one-hot routes it is the fraction of timestep boundaries where the expert
    changes (N_E intervals over T timesteps give (N_E - 1) / (T - 1)).

    Args:
        probs: (T, N_E) router probabilities, row t = timestep t.
    Returns:
        scalar loss.
    """
    if probs.dim() != 2 or probs.shape[0] < 2:
        raise ValueError('probs must be (T, N_E) with T >= 2 timesteps, got shape '
                         f'{tuple(probs.shape)}')
    return 0.5 * (probs[1:] - probs[:-1]).abs().sum(-1).mean()
