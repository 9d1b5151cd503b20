"""Temporal routers: timestep -> expert logits (ALTER_SPEC §4).

Contract: ``ROUTERS.build(dict(type=..., num_experts=N_E,
timestep_features=e))`` where ``e`` (T, D) holds the backbone's sinusoidal
``time_proj`` output for every training timestep (row t = timestep t);
``router(timesteps)`` maps a LongTensor (B,) of timesteps in [0, T) to logits
(B, N_E). The hypernetwork relaxes them with a Gumbel-softmax; the routing
table is their argmax.

Fixed routers return 0 for the chosen expert and -inf elsewhere, so the
softmax is exactly one-hot with or without Gumbel noise.
"""
from typing import Optional

import torch
from torch import nn

from alter.registry import ROUTERS


def check_timestep_features(timestep_features: torch.Tensor) -> None:
    """Raises unless ``timestep_features`` is a (T, D) tensor."""
    if not isinstance(timestep_features, torch.Tensor) or timestep_features.dim() != 2:
        found = (f'shape {tuple(timestep_features.shape)}' if isinstance(
            timestep_features, torch.Tensor) else type(timestep_features).__name__)
        raise ValueError('timestep_features must be a 2-D tensor (T timesteps, D features), '
                         f'got {found}')


class Router(nn.Module):
    """Base of all routers: checks the arguments and the timesteps.

    Attributes:
        num_experts: N_E.
        num_timesteps: T, the number of training timesteps.
    """

    def __init__(self, num_experts: int, timestep_features: torch.Tensor) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f'num_experts must be >= 1, got {num_experts}')
        check_timestep_features(timestep_features)
        self.num_experts = num_experts
        self.num_timesteps = timestep_features.shape[0]

    @property
    def learnable(self) -> bool:
        """Whether the router has parameters to train."""
        return any(True for _ in self.parameters())

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(B,) integer timesteps in [0, T) -> (B, N_E) logits."""
        self._check_timesteps(timesteps)
        return self.route_logits(timesteps)

    def route_logits(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(B,) valid timesteps -> (B, N_E) logits; implemented by each router."""
        raise NotImplementedError

    def _check_timesteps(self, timesteps: torch.Tensor) -> None:
        if timesteps.dim() != 1 or timesteps.dtype not in (torch.int32, torch.int64):
            raise ValueError('timesteps must be a 1-D integer tensor (B,), got '
                             f'{timesteps.dtype} of shape {tuple(timesteps.shape)}')
        # A host check (one sync): routers run in training only, and an
        # out-of-range index on a GPU would be an opaque device-side assert.
        if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= self.num_timesteps):
            raise ValueError(f'timesteps must lie in [0, {self.num_timesteps}), got values in '
                             f'[{timesteps.min().item()}, {timesteps.max().item()}]')


def _equal_width_index(timesteps: torch.Tensor, num_intervals: int,
                       num_timesteps: int) -> torch.Tensor:
    """Index i of the interval [i * T / n, (i + 1) * T / n) holding each timestep, exactly."""
    return torch.div(timesteps.long() * num_intervals, num_timesteps, rounding_mode='floor')


def _fixed_logits(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(B,) expert ids -> (B, N_E) float32 logits: 0 at the id, -inf elsewhere."""
    logits = torch.full((experts.shape[0], num_experts), float('-inf'), dtype=torch.float32,
                        device=experts.device)
    return logits.scatter_(1, experts[:, None], 0.0)


def feature_periods(features: torch.Tensor) -> torch.Tensor:
    """(D,) period in timesteps of each column of (T, D) features, estimated from its
    sign changes about its mean: ``2 T / crossings`` (exact for a sinusoid up to one
    crossing; a monotone column gets 2 T, a constant one ``inf``)."""
    centred = features - features.mean(0)
    crossings = (centred[1:] * centred[:-1] < 0).sum(0).float()
    return 2 * features.shape[0] / crossings  # x / 0 = inf


@ROUTERS.register_module()
class HyperNetRouter(Router):
    """The paper's router: an MLP on the sinusoidal timestep features.

    ``Linear(D -> hidden_dim) -> LayerNorm -> ReLU -> Linear(hidden_dim -> N_E,
    no bias)``; the features (T, D) are kept as a buffer.

    Args:
        hidden_dim: width of the MLP (64 in the paper).
        min_period: None (the paper) feeds every feature column. A number keeps only
            the columns that oscillate no faster than once per ``min_period``
            timesteps (``feature_periods``). The backbone's projection holds
            frequencies up to 1 rad per timestep, so neighbouring timesteps differ
            in many features and a freshly initialised MLP routes them to unrelated
            experts (~100-200 routing segments over 1000 timesteps); e.g. 100 keeps
            the slow components (an option beyond the paper, off by default).
    """

    def __init__(self, num_experts: int, timestep_features: torch.Tensor,
                 hidden_dim: int = 64, min_period: Optional[float] = None) -> None:
        super().__init__(num_experts, timestep_features)
        features = timestep_features.detach().float()
        if min_period is not None:
            keep = feature_periods(features) >= min_period
            if not keep.any():
                raise ValueError(f'min_period={min_period} drops every timestep feature (their '
                                 f'longest period is {feature_periods(features).max():.1f} '
                                 'timesteps); lower it')
            features = features[:, keep]
        self.register_buffer('timestep_features', features.clone())
        self.min_period = min_period
        self.mlp = nn.Sequential(
            nn.Linear(features.shape[1], hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, num_experts, bias=False))

    def route_logits(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_features[timesteps])


@ROUTERS.register_module()
class TableRouter(Router):
    """Free logits per timestep bin (the paper's learned-table ablation).

    Bin b holds the timesteps in [b * T / num_bins, (b + 1) * T / num_bins);
    ``num_bins=None`` means one bin per timestep. Logits start at 0 (no
    preference; ties go to expert 0 until training separates them).
    """

    def __init__(self, num_experts: int, timestep_features: torch.Tensor,
                 num_bins: Optional[int] = None) -> None:
        super().__init__(num_experts, timestep_features)
        num_bins = self.num_timesteps if num_bins is None else num_bins
        if not 1 <= num_bins <= self.num_timesteps:
            raise ValueError(f'num_bins must be in [1, {self.num_timesteps}] (the number of '
                             f'timesteps), got {num_bins}')
        self.num_bins = num_bins
        self.logits = nn.Parameter(torch.zeros(num_bins, num_experts))

    def route_logits(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.logits[_equal_width_index(timesteps, self.num_bins, self.num_timesteps)]


@ROUTERS.register_module()
class ManualRouter(Router):
    """Fixed equal-width intervals ("Manual" ablation): expert i serves the
    timesteps in [i * T / N_E, (i + 1) * T / N_E)."""

    def route_logits(self, timesteps: torch.Tensor) -> torch.Tensor:
        experts = _equal_width_index(timesteps, self.num_experts, self.num_timesteps)
        return _fixed_logits(experts, self.num_experts)


@ROUTERS.register_module()
class StaticRouter(Router):
    """Every timestep to expert 0 ("Static" ablation, meant for N_E = 1)."""

    def route_logits(self, timesteps: torch.Tensor) -> torch.Tensor:
        return _fixed_logits(torch.zeros_like(timesteps, dtype=torch.long), self.num_experts)
