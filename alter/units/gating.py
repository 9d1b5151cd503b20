"""Gated execution of units without forking diffusers.

``UnitGating`` replaces each unit module's ``forward`` *on the instance* (the
diffusers hook pattern), so the module tree and its state-dict keys stay those
of the plain diffusers UNet and ``remove()`` restores the original forwards.

Three modes, set on the shared ``GateState``:

* dense -- every unit runs (no gates set);
* soft  -- per-sample gates ``g`` of shape ``(B, N_L)``:
  ``y = (1 - g) * bypass(x) + g * f(x)`` (training, ALTER_SPEC §2);
* hard  -- a tuple of Python bools per unit, chosen by a host-side expert id:
  a skipped unit returns ``bypass(x)`` without running ``f``. Reading a Python
  bool needs no device sync and, under ``torch.compile``, becomes a guard
  instead of a graph break.
"""
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from diffusers.models.transformers.transformer_2d import (Transformer2DModel,
                                                          Transformer2DModelOutput)
from torch import nn

from alter.units.spaces import Unit


class GateState:
    """Mutable gating state shared by all unit forwards of one UNet."""

    def __init__(self) -> None:
        self.gates: Optional[torch.Tensor] = None  # (B, N_L) soft gates
        self.keep: Optional[Tuple[bool, ...]] = None  # (N_L,) hard decisions


def _bypass(unit: Unit, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if unit.bypass == 'identity':
        return x
    if unit.bypass == 'slice':
        return x[:, :unit.keep_channels]
    return module.conv_shortcut(x)


def _split(output):
    """Tensor of a unit's output and a function putting a tensor back in its format."""
    if isinstance(output, torch.Tensor):
        return output, lambda y: y
    if isinstance(output, tuple):  # Transformer2DModel(return_dict=False)
        return output[0], lambda y: (y, ) + output[1:]
    return output.sample, Transformer2DModelOutput  # Transformer2DModel(return_dict=True)


class _GatedForward:
    """The forward installed on one unit module."""

    def __init__(self, unit: Unit, index: int, state: GateState, original) -> None:
        self.unit, self.index, self.state, self.original = unit, index, state, original

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        state, module = self.state, self.unit.module
        if state.keep is not None:
            if state.keep[self.index]:
                return self.original(x, *args, **kwargs)
            bypass = _bypass(self.unit, module, x)
            if isinstance(module, Transformer2DModel):  # keep the caller's output format
                return Transformer2DModelOutput(sample=bypass) \
                    if kwargs.get('return_dict', True) else (bypass, )
            return bypass
        output = self.original(x, *args, **kwargs)
        if state.gates is None:
            return output
        y, pack = _split(output)
        g = state.gates[:, self.index].to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
        return pack((1 - g) * _bypass(self.unit, module, x) + g * y)


class UnitGating:
    """Gates on the units of one UNet.

    Args:
        units: from ``PruningSpace.find(unet)``; their order defines the gate
            index of each unit.
    """

    def __init__(self, units: Sequence[Unit]) -> None:
        self.units: List[Unit] = list(units)
        self.state = GateState()
        self._saved = []
        for index, unit in enumerate(self.units):
            module = unit.module
            if isinstance(module.__dict__.get('forward'), _GatedForward):
                raise RuntimeError(f'unit {unit.name} ({unit.path}) is already gated; '
                                   'call remove() on the existing UnitGating first')
            self._saved.append(module.__dict__.get('forward'))
            module.forward = _GatedForward(unit, index, self.state, module.forward)

    @property
    def names(self) -> List[str]:
        return [u.name for u in self.units]

    def __len__(self) -> int:
        return len(self.units)

    def set_gates(self, gates: Optional[torch.Tensor]) -> None:
        """Soft mode with ``gates`` of shape ``(B, N_L)``; None returns to dense."""
        if gates is not None and (gates.dim() != 2 or gates.shape[1] != len(self)):
            raise ValueError(f'expected gates of shape (batch, {len(self)}) for {len(self)} '
                             f'units, got {tuple(gates.shape)}')
        self.state.gates, self.state.keep = gates, None

    def set_keep(self, keep: Optional[Sequence[bool]]) -> None:
        """Hard mode: unit i runs iff ``keep[i]``; None returns to dense.

        ``keep`` is turned into Python bools once here, so the per-unit
        decision never touches a device tensor.
        """
        if keep is not None:
            keep = tuple(bool(k) for k in (keep.tolist() if torch.is_tensor(keep) else keep))
            if len(keep) != len(self):
                raise ValueError(f'expected a keep mask of length {len(self)} (one per unit), '
                                 f'got length {len(keep)}')
        self.state.keep, self.state.gates = keep, None

    @contextmanager
    def soft(self, gates: torch.Tensor) -> Iterator[None]:
        self.set_gates(gates)
        try:
            yield
        finally:
            self.set_gates(None)

    @contextmanager
    def hard(self, keep: Sequence[bool]) -> Iterator[None]:
        self.set_keep(keep)
        try:
            yield
        finally:
            self.set_keep(None)

    def remove(self) -> None:
        """Give every unit its original forward back."""
        for unit, saved in zip(self.units, self._saved):
            if saved is None:
                del unit.module.forward
            else:
                unit.module.forward = saved
        self._saved = []
        self.units = []
