"""Fitting the frozen mask table to the budget at T_end (an option beyond the paper).

The sparsity term holds the budget for the Gumbel-sampled masks the hypernetwork
trains with; the table frozen at T_end is the deterministic one (gate on iff
``L + b_g > 0``), whose keep ratio can land a few hundredths away from the target
(0.61-0.70 for a 0.65 target in the embedded study). The fit moves every gate's
threshold by one shared shift, so the hypernetwork's ranking of units and its
routing stay as they are, and the table keeps as close to the target as the
units' discrete costs allow.
"""
from typing import Union

import torch

from alter.units.costs import LatencyTable
from alter.units.macs import MacTable


@torch.no_grad()
def fit_gate_shift(gate_logits: torch.Tensor, usage: torch.Tensor,
                   costs: Union[MacTable, LatencyTable], target_keep: float) -> float:
    """The shift d whose table ``gate_logits + d > 0`` keeps closest to ``target_keep``.

    Args:
        gate_logits: (N_E, N_L) the experts' gate logits ``L + b_g``.
        usage: (N_E,) fraction of the training timesteps routed to each expert.
        costs: the cost table the budget is counted in (``model.cost_model``).
        target_keep: the budget's keep ratio p.
    Returns:
        d (0.0 when no shift comes closer); among equally close shifts the smallest |d|.
    """
    # A gate is on iff d > -logit, so the table only changes where d crosses a
    # threshold: one candidate between each pair of neighbours covers every table.
    thresholds = torch.unique(-gate_logits.double().flatten())  # sorted
    candidates = torch.cat([thresholds[:1] - 1, (thresholds[:-1] + thresholds[1:]) / 2,
                            thresholds[-1:] + 1, thresholds.new_zeros(1)])
    masks = (gate_logits.double()[None] + candidates[:, None, None] > 0).double()  # (C, N_E, N_L)
    # The keep ratio is linear in the masks: its mean over timesteps weighs each expert's
    # keep ratio by the share of timesteps it serves.
    keep = costs.keep_ratio(masks) @ usage.double().to(masks.device)  # (C,)
    error = (keep - target_keep).abs()
    closest = error <= error.min() + 1e-12
    return candidates[closest][candidates[closest].abs().argmin()].item()
