"""How ALTER's UNet update runs a batch whose samples belong to different experts.

Every sample of a training batch has its own timestep, hence its own expert
(ALTER_SPEC §5). The UNet step, chosen by ``model.unet_step`` (``UNET_STEPS``),
decides how the student runs under those per-sample masks:

* ``blended`` -- one forward of the whole batch in which every unit runs and a
  switched-off unit is blended away per sample, ``(1 - g) * bypass(x) + g * f(x)``
  with g in {0, 1}: the dense UNet's compute, whatever the masks;
* ``selected`` (default) -- one forward of the whole batch in which each unit
  runs only on the samples whose expert keeps it and writes its output over the
  bypass of the others (``UnitGating.selected``): a switched-off unit costs
  nothing for the samples that switch it off, in forward or backward, while
  every layer still runs once per step on one batch;
* ``grouped`` -- the samples grouped by expert and each group run under hard
  skipping, the mechanism of routed inference (``UnitGating.hard``): one whole
  UNet call per expert present, so per-call costs (weight traffic, dispatch) are
  paid once per group (``docs/benchmarks.md``).

All give the same losses and gradients up to float rounding: at binary gates the
blend is a per-sample choice between ``bypass(x)`` and ``f(x)``, which the other
two make without computing the unchosen branch; every term of L_U is a mean over
samples of equal size, so the batch's term is the sum of the group terms
weighted by group size; and a parameter that no sample of the batch used gets a
zero gradient, as the blend gives it, so weight decay and momentum treat it alike
in all three. The hypernetwork step needs soft gates and always blends.
"""
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from alter.registry import UNET_STEPS
from alter.units.gating import UnitGating

# loss(index) -> weighted L_U terms (batch means) of the samples ``index`` (None: all).
StudentLoss = Callable[[Optional[torch.Tensor]], Dict[str, torch.Tensor]]


def take_samples(batch, index: Optional[torch.Tensor]):
    """The samples ``index`` ((n,) int64) of a batch-first tensor, or of a dict, list or
    tuple of them (contexts, teacher features); ``index`` None gives ``batch`` itself."""
    if index is None:
        return batch
    if torch.is_tensor(batch):
        return batch[index.to(batch.device)]
    if isinstance(batch, dict):
        return {k: take_samples(v, index) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_samples(v, index) for v in batch)
    raise TypeError(f'cannot take samples of a {type(batch).__name__}; expected batch-first '
                    'tensors, or dicts, lists or tuples of them')


def expert_groups(experts: torch.Tensor) -> List[Tuple[int, torch.Tensor]]:
    """``(expert, index)`` for every expert present in ``experts`` ((B,) int64), in expert
    order; ``index`` (n,) holds its samples' positions in the batch, ascending."""
    ids = experts.tolist()  # one host read per step
    return [(e, torch.tensor([i for i, x in enumerate(ids) if x == e], dtype=torch.long))
            for e in sorted(set(ids))]


class UNetStep:
    """Contract of a UNet step: run the student, back-propagate L_U, update the UNet.

    ``runs_every_unit``: every unit runs in every step on every rank, whatever the
    masks. A step without it runs a data-dependent subset, so data-parallel ranks
    run different units: DDP must find the unused parameters and FSDP, whose
    collectives follow the modules each rank runs, cannot shard the UNet.
    """

    runs_every_unit: bool

    def __call__(self, unet: nn.Module, gating: UnitGating, masks: torch.Tensor,
                 experts: torch.Tensor, loss: StudentLoss,
                 optim_wrapper) -> Dict[str, torch.Tensor]:
        """One update of the UNet.

        Args:
            unet: the trained denoiser as its forward is called (possibly a DDP wrapper).
            gating: the ``UnitGating`` on its units.
            masks: (N_E, N_L) hard 0/1 expert masks.
            experts: (B,) int64 expert of each sample.
            loss: runs the student on the samples it is given, under the gating as set.
            optim_wrapper: the UNet's mmengine ``OptimWrapper``.

        Returns:
            the detached terms of the whole batch.
        """
        raise NotImplementedError


@UNET_STEPS.register_module('blended')
class BlendedStep(UNetStep):
    """The whole batch in one forward; switched-off units run and are blended away."""

    runs_every_unit = True

    @staticmethod
    def gated(gating: UnitGating, gates: torch.Tensor):
        """The gating mode of the step's forward, for per-sample binary ``gates`` (B, N_L)."""
        return gating.soft(gates)

    def __call__(self, unet, gating, masks, experts, loss, optim_wrapper):
        # The gates stay set through backward: gradient checkpointing re-runs unit
        # forwards there and must see the same gates.
        with self.gated(gating, masks[experts]):
            with optim_wrapper.optim_context(unet):
                terms = loss(None)
            optim_wrapper.update_params(sum(terms.values()))
        return {k: v.detach() for k, v in terms.items()}


@UNET_STEPS.register_module('selected')
class SelectedStep(BlendedStep):
    """The whole batch in one forward; each unit runs on the samples whose expert keeps it.

    A unit no sample keeps runs on one sample times zero (``UnitGating.selected``), so
    every unit runs in every step, as the blended step's.
    """

    @staticmethod
    def gated(gating: UnitGating, gates: torch.Tensor):
        return gating.selected(gates)


@UNET_STEPS.register_module('grouped')
class GroupedStep(UNetStep):
    """One hard-skipped forward and backward per expert present in the batch.

    Each group is back-propagated while its mask is set: gradient checkpointing
    re-runs unit forwards in backward and must skip the same units, and only one
    group's activations are held at a time. Under DDP the gradients are reduced
    once, in the last group's backward (the others run under ``no_sync``).
    mmengine's wrapper counts every backward, so gradient accumulation over
    iterations (``accumulative_counts`` > 1) is refused.
    """

    runs_every_unit = False

    def __call__(self, unet, gating, masks, experts, loss, optim_wrapper):
        accumulation = getattr(optim_wrapper, '_accumulative_counts', 1)
        if accumulation != 1:
            raise ValueError(f'the grouped UNet step back-propagates each expert group on its '
                             f'own and cannot accumulate over iterations '
                             f'(accumulative_counts={accumulation}); raise the batch size, or '
                             "set model.unet_step=dict(type='blended')")
        keep = masks.bool().tolist()  # one host read: Python bools for the gating
        groups = expert_groups(experts)
        totals: Dict[str, torch.Tensor] = {}
        for position, (expert, index) in enumerate(groups):
            last = position == len(groups) - 1
            sync = nullcontext() if last or not hasattr(unet, 'no_sync') else unet.no_sync()
            with sync, gating.hard(keep[expert]):
                with optim_wrapper.optim_context(unet):
                    share = len(index) / len(experts)
                    terms = {k: share * v for k, v in loss(index).items()}
                optim_wrapper.backward(sum(terms.values()))
            for k, v in terms.items():
                totals[k] = totals[k] + v.detach() if k in totals else v.detach()
        for p in unet.parameters():
            if p.requires_grad and p.grad is None:  # in no group's units: zero, as blended
                p.grad = torch.zeros_like(p)
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        return totals
