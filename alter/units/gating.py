"""Gated execution of units without forking diffusers.

``UnitGating`` replaces each unit module's ``forward`` *on the instance* (the
diffusers hook pattern), so the module tree and its state-dict keys stay those
of the plain diffusers model (UNet or transformer) and ``remove()`` restores the
original forwards. Joint blocks (SD3, Flux) blend and bypass both their text and
image streams.

Three modes, set on the shared ``GateState``:

* dense -- every unit runs (no gates set);
* soft  -- per-sample gates ``g`` of shape ``(B, N_L)``:
  ``y = (1 - g) * bypass(x) + g * f(x)`` (training, ALTER_SPEC §2);
* hard  -- a tuple of Python bools per unit, chosen by a host-side expert id:
  a skipped unit returns ``bypass(x)`` without running ``f``. Reading a Python
  bool needs no device sync and, under ``torch.compile``, becomes a guard
  instead of a graph break.
"""
import inspect
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from diffusers.models.transformers.transformer_2d import (Transformer2DModel,
                                                          Transformer2DModelOutput)
from torch import nn

from alter.units.unit import Unit


class GateState:
    """Mutable gating state shared by all unit forwards of one model."""

    def __init__(self) -> None:
        self.gates: Optional[torch.Tensor] = None  # (B, N_L) soft gates
        self.keep: Optional[Tuple[bool, ...]] = None  # (N_L,) hard decisions


def _split(output, num_streams: int):
    """The streams of a unit's output and a function putting streams back in its format."""
    if isinstance(output, torch.Tensor):
        return (output, ), lambda streams: streams[0]
    if isinstance(output, tuple):  # joint blocks: (text, image); Transformer2DModel: (sample, )
        return output[:num_streams], lambda streams: tuple(streams) + output[num_streams:]
    return (output.sample, ), lambda streams: Transformer2DModelOutput(sample=streams[0])


class _GatedForward:
    """The forward installed on one unit module."""

    def __init__(self, unit: Unit, index: int, state: GateState, original) -> None:
        self.unit, self.index, self.state, self.original = unit, index, state, original
        # Blocks are called positionally or by keyword (SD3 and Flux models pass
        # hidden_states=...): the name of the first parameter finds the hidden state.
        self.hidden_name = next(iter(inspect.signature(original).parameters))

    def __call__(self, *args, **kwargs):
        state = self.state
        if state.keep is not None:
            if state.keep[self.index]:
                return self.original(*args, **kwargs)
            return self._skipped(args, kwargs)
        output = self.original(*args, **kwargs)
        if state.gates is None:
            return output
        bypass = self._bypass(args, kwargs)
        streams, pack = _split(output, len(bypass))
        g = state.gates[:, self.index]
        return pack([None if y is None else _blend(g, b, y) for y, b in zip(streams, bypass)])

    def _bypass(self, args, kwargs) -> tuple:
        """The streams a skipped unit passes on (one, or text and image for joint blocks)."""
        x = args[0] if args else kwargs[self.hidden_name]
        kind, module = self.unit.bypass, self.unit.module
        if kind == 'identity':
            return (x, )
        if kind == 'slice':
            return (x[:, :self.unit.keep_channels], )
        if kind == 'shortcut':
            return (module.conv_shortcut(x), )
        text = args[1] if len(args) > 1 else kwargs['encoder_hidden_states']
        return (text if kind == 'joint' else None, x)

    def _skipped(self, args, kwargs):
        """The output of a skipped unit, in the format its caller expects."""
        bypass = self._bypass(args, kwargs)
        if len(bypass) > 1:
            return bypass
        if isinstance(self.unit.module, Transformer2DModel):
            return Transformer2DModelOutput(sample=bypass[0]) \
                if kwargs.get('return_dict', True) else bypass
        return bypass[0]


def _blend(gates: torch.Tensor, bypass: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1 - g) * bypass + g * y`` with per-sample gates (B,) broadcast over ``y``."""
    g = gates.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
    return (1 - g) * bypass + g * y


class UnitGating:
    """Gates on the units of one model.

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
