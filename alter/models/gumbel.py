"""Gumbel relaxations of binary gates and one-hot routes (ALTER_SPEC §4).

Both functions follow one convention: the noise is added to the logits
*before* the temperature division, ``y = f((logits + noise) / tau)``, so the
hard decision ``logits + noise > 0`` (or the argmax) does not depend on tau.

* ``hard=True``  -- straight-through: the forward value is exactly the hard
  0/1 decision, the backward pass uses the soft relaxation's gradient;
* ``hard=False`` -- the soft relaxation itself (values in [0, 1]);
* ``noise=False`` -- deterministic (evaluation): the hard decision is
  ``logits > 0`` for gates and ``argmax(logits)`` for routes.
"""
from typing import Optional

import torch
import torch.nn.functional as F


def _uniform(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Uniform samples in (0, 1) shaped like ``like``.

    ``torch.rand`` is in [0, 1); an exact 0 would turn into infinite noise and
    could override a finite logit, so it is raised to the smallest normal float.
    """
    # Drawn on the generator's device (a CPU generator may drive CUDA logits).
    device = generator.device if generator is not None else like.device
    u = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)
    return u.clamp_(min=torch.finfo(like.dtype).tiny)


def _straight_through(y_hard: torch.Tensor, y_soft: torch.Tensor) -> torch.Tensor:
    """``y_hard`` in the forward pass, the gradient of ``y_soft`` in the backward pass.

    Exact for y_soft in [0, 1]: with round-to-nearest, ``(0 - y) + y == 0`` and
    ``(1 - y) + y == 1``, so the forward values are exactly 0 and 1.
    """
    return y_hard - y_soft.detach() + y_soft


def gumbel_sigmoid(logits: torch.Tensor, tau: float, hard: bool, noise: bool,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Binary-concrete gates ``sigmoid((logits + logistic noise) / tau)``.

    Args:
        logits: (...) gate logits.
        tau: temperature (> 0) of the relaxation.
        hard: straight-through 0/1 forward values if True, soft values if False.
        noise: add logistic noise (the difference of two Gumbels) if True.
        generator: source of the noise.
    Returns:
        (...) gates, same shape and dtype as ``logits``.
    """
    if noise:
        u = _uniform(logits, generator)
        logits = logits + (torch.log(u) - torch.log1p(-u))
    y_soft = torch.sigmoid(logits / tau)
    if not hard:
        return y_soft
    return _straight_through((logits > 0).to(logits.dtype), y_soft)


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool, noise: bool,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gumbel-softmax over the last dimension: ``softmax((logits + gumbel) / tau)``.

    ``-inf`` logits (fixed routers) stay ``-inf`` under the noise and get
    probability exactly 0, without NaN in the forward or backward pass, as long
    as every row has one finite logit.

    Args:
        logits: (..., N) route logits.
        tau: temperature (> 0) of the relaxation.
        hard: straight-through one-hot forward values if True, soft values if False.
        noise: add Gumbel noise if True.
        generator: source of the noise.
    Returns:
        (..., N) route weights summing to 1 over the last dimension.
    """
    if noise:
        logits = logits - torch.log(-torch.log(_uniform(logits, generator)))
    y_soft = F.softmax(logits / tau, dim=-1)
    if not hard:
        return y_soft
    # One-hot of the argmax of the (noisy) logits; ties go to the first index.
    y_hard = torch.zeros_like(y_soft).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    return _straight_through(y_hard, y_soft)
