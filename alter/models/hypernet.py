"""The hypernetwork H: expert masks and the timestep routing (ALTER_SPEC §4).

H owns an expert generator (logits L, (N_E, N_L)) and a router (logits per
timestep, (T, N_E)) and relaxes both:

    M   = gumbel_sigmoid(L + b_g, tau_g)          expert masks      (N_E, N_L)
    s_t = gumbel_softmax(router(t), tau_r)        routing           (T, N_E)
    m_t = s_t . M                                 timestep masks    (T, N_L)

In both relaxations the noise is added to the logits before the division by
the temperature (see ``alter.models.gumbel``): a gate is on iff
``L + b_g + noise > 0``.

Train mode samples Gumbel noise; eval mode is deterministic (no noise, gate =
1 iff ``L + b_g > 0``, route = argmax), and ``table()`` gives that
deterministic result as the hard masks and routing table inference uses.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from alter.models.gumbel import gumbel_sigmoid, gumbel_softmax
from alter.models.routers import check_timestep_features
from alter.registry import EXPERT_GENERATORS, ROUTERS

ESTIMATORS = ('straight_through', 'soft')


@dataclass
class HyperOutput:
    """One draw of the hypernetwork.

    Attributes:
        expert_masks: (N_E, N_L) gates in [0, 1]; exactly 0/1 in the forward
            pass with the straight-through estimator or in eval mode.
        routing: (T, N_E) routing of every training timestep; one-hot under
            the same conditions.
        route_probs: (T, N_E) noise-free router probabilities
            ``softmax(router logits / route_tau)`` (for the balance loss).
        timestep_masks: (T, N_L) per-timestep masks ``routing @ expert_masks``.
    """

    expert_masks: torch.Tensor
    routing: torch.Tensor
    route_probs: torch.Tensor
    timestep_masks: torch.Tensor


def _sub_config(cfg: dict, what: str, **fixed) -> dict:
    """``cfg`` with the arguments H sets itself; raises if ``cfg`` sets them too."""
    clash = sorted(set(cfg) & set(fixed))
    if clash:
        raise ValueError(f'the {what} config must not set {clash}: HyperNetwork passes them '
                         f'itself; remove them from {dict(cfg)}')
    return dict(cfg, **fixed)


class HyperNetwork(nn.Module):
    """Expert generator + router, relaxed with (straight-through) Gumbel noise.

    Args:
        num_units: N_L, units of the backbone's pruning space.
        num_experts: N_E.
        timestep_features: (T, D) the backbone's ``time_proj`` output for
            every training timestep (row t = timestep t).
        expert_generator: ``EXPERT_GENERATORS`` config (``num_experts`` and
            ``num_units`` are added here).
        router: ``ROUTERS`` config (``num_experts`` and ``timestep_features``
            are added here).
        gate_offset: b_g, added to the expert logits; 4 starts every gate at 1.
        gate_tau: tau_g of the gate relaxation.
        route_tau: tau_r of the routing relaxation.
        estimator: ``straight_through`` (hard forward values, soft gradients)
            or ``soft`` (the relaxation itself) in train mode.
    """

    def __init__(self, num_units: int, num_experts: int, timestep_features: torch.Tensor,
                 expert_generator: dict = dict(type='HyperExperts'),
                 router: dict = dict(type='HyperNetRouter'), gate_offset: float = 4.0,
                 gate_tau: float = 0.4, route_tau: float = 0.4,
                 estimator: str = 'straight_through') -> None:
        super().__init__()
        if num_units < 1:
            raise ValueError(f'num_units must be >= 1, got {num_units}')
        if num_experts < 1:
            raise ValueError(f'num_experts must be >= 1, got {num_experts}')
        check_timestep_features(timestep_features)
        if estimator not in ESTIMATORS:
            raise ValueError(f'unknown estimator {estimator!r}; expected one of {ESTIMATORS}')
        if gate_tau <= 0 or route_tau <= 0:
            raise ValueError(f'temperatures must be > 0, got gate_tau={gate_tau}, '
                             f'route_tau={route_tau}')
        self.num_units = num_units
        self.num_experts = num_experts
        self.num_timesteps = timestep_features.shape[0]
        # Plain attributes, so a hook can anneal the temperatures.
        self.gate_offset = gate_offset
        self.gate_tau = gate_tau
        self.route_tau = route_tau
        self.estimator = estimator
        self.experts = EXPERT_GENERATORS.build(_sub_config(
            expert_generator, 'expert_generator', num_experts=num_experts, num_units=num_units))
        self.router = ROUTERS.build(_sub_config(
            router, 'router', num_experts=num_experts, timestep_features=timestep_features))
        # Every training timestep, moved with the module; derived, so not saved.
        self.register_buffer('timesteps', torch.arange(self.num_timesteps), persistent=False)

    def forward(self, generator: Optional[torch.Generator] = None) -> HyperOutput:
        """Masks and routing for all T training timesteps.

        Args:
            generator: source of the Gumbel noise in train mode (unused in eval).
        Returns:
            ``HyperOutput`` with expert_masks (N_E, N_L), routing and
            route_probs (T, N_E), timestep_masks (T, N_L).
        """
        noise = self.training
        hard = self.estimator == 'straight_through' or not self.training
        # In float32 even under AMP: in bfloat16, 0.2 % of the uniform draws are
        # exactly 0 (forcing a gate off) and the masks feed the MAC budget.
        with torch.autocast(self.timesteps.device.type, enabled=False):
            expert_logits = self.experts().float()  # (N_E, N_L)
            route_logits = self.router(self.timesteps).float()  # (T, N_E)
            expert_masks = gumbel_sigmoid(expert_logits + self.gate_offset, self.gate_tau, hard,
                                          noise, generator)
            routing = gumbel_softmax(route_logits, self.route_tau, hard, noise, generator)
            route_probs = F.softmax(route_logits / self.route_tau, dim=-1)
            return HyperOutput(expert_masks=expert_masks, routing=routing,
                               route_probs=route_probs,
                               timestep_masks=routing @ expert_masks)  # (T, N_L)

    @torch.no_grad()
    def table(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The deterministic decisions, in any mode.

        Returns:
            expert_masks: (N_E, N_L) bool, unit kept iff ``L + b_g > 0``.
            route: (T,) int64, the expert of each training timestep (argmax).
        """
        expert_masks = self.experts() + self.gate_offset > 0
        route = self.router(self.timesteps).argmax(-1)
        return expert_masks, route

    def extra_repr(self) -> str:
        return (f'num_units={self.num_units}, num_experts={self.num_experts}, '
                f'num_timesteps={self.num_timesteps}, gate_offset={self.gate_offset}, '
                f'gate_tau={self.gate_tau}, route_tau={self.route_tau}, '
                f'estimator={self.estimator!r}')
