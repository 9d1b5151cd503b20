"""Gated execution of units without forking diffusers.

``UnitGating`` replaces each unit module's ``forward`` *on the instance* (the
diffusers hook pattern), so the module tree and its state-dict keys stay those
of the plain diffusers model (UNet or transformer) and ``remove()`` restores the
original forwards. Joint blocks (SD3, Flux) blend and bypass both their text and
image streams.

Four modes, set on the shared ``GateState``:

* dense    -- every unit runs (no gates set);
* soft     -- per-sample gates ``g`` of shape ``(B, N_L)``:
  ``y = (1 - g) * bypass(x) + g * f(x)`` (training, ALTER_SPEC §2);
* selected -- per-sample binary gates, each unit run only on the samples whose
  gate is 1 and its output written over the bypass of the batch: the soft mode's
  values and gradients at binary gates without the switched-off samples' compute
  (the UNet step, ``alter.models.unet_steps``);
* hard     -- a tuple of Python bools per unit, chosen by a host-side expert id:
  a skipped unit returns ``bypass(x)`` without running ``f``. Reading a Python
  bool needs no device sync and, under ``torch.compile``, becomes a guard
  instead of a graph break.
"""
import inspect
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from diffusers.models.transformers.transformer_2d import (Transformer2DModel,
                                                          Transformer2DModelOutput)

from alter.units.unit import Unit

# Arguments of a unit's forward that are shared by the batch even when their first
# dimension happens to equal the batch size (Flux's rotary embeddings are (tokens, dim)).
SHARED_ARGUMENTS = frozenset({'image_rotary_emb'})


class GateState:
    """Mutable gating state shared by all unit forwards of one model."""

    def __init__(self) -> None:
        self.gates: Optional[torch.Tensor] = None  # (B, N_L) soft gates
        self.keep: Optional[Tuple[bool, ...]] = None  # (N_L,) hard decisions
        # Selected mode: per unit, the (n,) int64 positions of the samples it runs on,
        # None for all of them.
        self.select: Optional[Tuple[Optional[torch.Tensor], ...]] = None


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
        self.arg_names = list(inspect.signature(original).parameters)
        self.hidden_name = self.arg_names[0]

    def __call__(self, *args, **kwargs):
        state = self.state
        if state.keep is not None:
            if state.keep[self.index]:
                return self.original(*args, **kwargs)
            return self._skipped(args, kwargs)
        if state.select is not None:
            return self._on_samples(state.select[self.index], args, kwargs)
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

    def _on_samples(self, index: Optional[torch.Tensor], args, kwargs):
        """The unit run on the samples ``index`` ((n,) int64, None: all) and written over the
        bypass of the others: ``(1 - g) * bypass + g * f`` at binary ``g``, value and gradient.

        With no sample selected the unit still runs, on one sample whose output is added
        times zero: every parameter then gets a gradient (zero, as the blend gives it), so
        data-parallel ranks run the same modules and FSDP can shard them.
        """
        if index is None:
            return self.original(*args, **kwargs)
        bypass = self._bypass(args, kwargs)
        batch = bypass[-1].shape[0]
        unused = index.numel() == 0
        chosen = index[:0].new_zeros(1) if unused else index
        names = self.arg_names + [None] * max(0, len(args) - len(self.arg_names))
        output = self.original(*(_take(a, chosen, batch, n) for n, a in zip(names, args)),
                               **{n: _take(a, chosen, batch, n) for n, a in kwargs.items()})
        streams, pack = _split(output, len(bypass))
        if unused:
            return pack([None if y is None else b + 0 * y.sum()
                         for y, b in zip(streams, bypass)])
        return pack([None if y is None else _write(b, index, y) for y, b in zip(streams, bypass)])

    def _skipped(self, args, kwargs):
        """The output of a skipped unit, in the format its caller expects."""
        bypass = self._bypass(args, kwargs)
        if len(bypass) > 1:
            return bypass
        if isinstance(self.unit.module, Transformer2DModel):
            return Transformer2DModelOutput(sample=bypass[0]) \
                if kwargs.get('return_dict', True) else bypass
        return bypass[0]


def _take(value, index: torch.Tensor, batch: int, name: Optional[str] = None):
    """The samples ``index`` of every per-sample tensor in ``value`` (a tensor, or a dict,
    list or tuple of them, whose first dimension is the batch ``batch``); the rest as is."""
    if name in SHARED_ARGUMENTS:
        return value
    if torch.is_tensor(value):
        return value.index_select(0, index) if value.dim() and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: _take(v, index, batch, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take(v, index, batch) for v in value)
    return value


def _write(bypass: torch.Tensor, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``bypass`` with the samples ``index`` replaced by ``y`` (n, ...), in the dtype the
    blend would give (under autocast a float32 bypass keeps a half-precision ``y`` in float32)."""
    dtype = torch.promote_types(bypass.dtype, y.dtype)
    return bypass.to(dtype).index_copy(0, index, y.to(dtype))


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
        self.state.gates, self.state.keep, self.state.select = gates, None, None

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
        self.state.keep, self.state.gates, self.state.select = keep, None, None

    def set_selected(self, gates: Optional[torch.Tensor]) -> None:
        """Selected mode from binary gates ``(B, N_L)``: unit i runs on the samples b with
        ``gates[b, i] == 1``; None returns to dense. One host read of the gates."""
        if gates is None:
            self.set_gates(None)
            return
        if gates.dim() != 2 or gates.shape[1] != len(self):
            raise ValueError(f'expected gates of shape (batch, {len(self)}) for {len(self)} '
                             f'units, got {tuple(gates.shape)}')
        on = gates.detach().cpu()
        if not torch.equal(on, on.bool().to(on.dtype)):
            raise ValueError('the selected mode needs binary gates (0 or 1); use soft() '
                             'for fractional ones')
        positions: Dict[Tuple[int, ...], Optional[torch.Tensor]] = {}  # one copy per pattern
        select = []
        for column in on.bool().t():
            rows = tuple(column.nonzero().flatten().tolist())
            if rows not in positions:
                positions[rows] = None if len(rows) == len(column) else \
                    torch.tensor(rows, dtype=torch.long, device=gates.device)
            select.append(positions[rows])
        self.state.select, self.state.gates, self.state.keep = tuple(select), None, None

    def soft(self, gates: torch.Tensor):
        """Soft mode for the ``with`` block."""
        return self._within(self.set_gates, gates)

    def selected(self, gates: torch.Tensor):
        """Selected mode for the ``with`` block."""
        return self._within(self.set_selected, gates)

    def hard(self, keep: Sequence[bool]):
        """Hard mode for the ``with`` block."""
        return self._within(self.set_keep, keep)

    @staticmethod
    @contextmanager
    def _within(setter, value) -> Iterator[None]:
        setter(value)
        try:
            yield
        finally:
            setter(None)

    def remove(self) -> None:
        """Give every unit its original forward back."""
        for unit, saved in zip(self.units, self._saved):
            if saved is None:
                del unit.module.forward
            else:
                unit.module.forward = saved
        self._saved = []
        self.units = []
