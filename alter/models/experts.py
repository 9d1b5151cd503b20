"""Expert generators: the gate logits of every expert (ALTER_SPEC §4).

Contract: ``EXPERT_GENERATORS.build(dict(type=..., num_experts=N_E,
num_units=N_L, **kw))`` gives a module whose call ``gen()`` returns the
expert logits L of shape (N_E, N_L). The hypernetwork turns them into masks
``gumbel_sigmoid(L + gate_offset, gate_tau)``; logits start near 0 so that,
with the offset, every gate starts at 1 (the dense backbone).
"""
import torch
from torch import nn

from alter.registry import EXPERT_GENERATORS


def _check_sizes(num_experts: int, num_units: int) -> None:
    if num_experts < 1:
        raise ValueError(f'num_experts must be >= 1, got {num_experts}')
    if num_units < 1:
        raise ValueError(f'num_units must be >= 1, got {num_units}')


@EXPERT_GENERATORS.register_module()
class HyperExperts(nn.Module):
    """The paper's generator: a shared MLP applied to frozen unit embeddings.

    Z (N_E, N_L, input_dim) is orthogonally initialised and frozen (a buffer,
    saved in the state dict); ``Linear(input_dim -> hidden_dim) -> LayerNorm ->
    ReLU -> Linear(hidden_dim -> 1, no bias)`` maps each embedding to one logit.
    """

    def __init__(self, num_experts: int, num_units: int, input_dim: int = 64,
                 hidden_dim: int = 256, init_logit_std: float = 0.5) -> None:
        super().__init__()
        _check_sizes(num_experts, num_units)
        # All N_E * N_L embeddings as one matrix: orthonormal rows if there are
        # at most input_dim of them, orthonormal columns otherwise.
        embeddings = torch.empty(num_experts * num_units, input_dim)
        nn.init.orthogonal_(embeddings)
        self.register_buffer('embeddings', embeddings.view(num_experts, num_units, input_dim))
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, 1, bias=False))
        # Initial logits spread with std ``init_logit_std`` around 0 (gates at 1
        # with the offset 4). The spread matters: the sparsity budget then
        # switches units off one by one as their logits cross 0; with nearly
        # equal logits they cross together and the hard table jumps between
        # all-on and all-off (seen at std ~0.1 on the tiny benchmark).
        with torch.no_grad():
            logits = self.forward()
            if logits.numel() > 1:
                self.mlp[-1].weight.mul_(init_logit_std / logits.std().clamp_min(1e-8))

    def forward(self) -> torch.Tensor:
        """(N_E, N_L) expert logits."""
        return self.mlp(self.embeddings).squeeze(-1)


@EXPERT_GENERATORS.register_module()
class LearnedExperts(nn.Module):
    """The expert logits as one free parameter (N_E, N_L), initialised to 0."""

    def __init__(self, num_experts: int, num_units: int) -> None:
        super().__init__()
        _check_sizes(num_experts, num_units)
        self.logits = nn.Parameter(torch.zeros(num_experts, num_units))

    def forward(self) -> torch.Tensor:
        """(N_E, N_L) expert logits."""
        return self.logits
