"""Routed execution: each timestep runs its expert, skipped units really skipped.

Two ways to drive the routing:

* ``ExpertRouter.select(t)`` -- the caller looks the timestep up on the host
  before each UNet call (the project's sampler, which holds the schedule);
* ``TimestepRouting`` -- the model's own ``forward`` routes every call by the
  timestep value it receives (diffusers pipelines, whatever part of the
  schedule they run and however many pipelines share the model).

The model is any supported denoiser (``alter.units.backbones``): a UNet or a
diffusion transformer; "UNet" below stands for either.
"""
import inspect
import types
from typing import Callable, List, Optional

import torch
from torch import nn

from alter.inference.experts import ExpertSet, fingerprint_mismatch
from alter.registry import PRUNING_SPACES
from alter.units.backbones import backbone_of
from alter.units.gating import UnitGating
from alter.units.macs import architecture_key


def check_weights(unet: nn.Module, experts: ExpertSet) -> None:
    """Raise unless ``unet`` holds the weights the experts were trained with."""
    if experts.weights_fingerprint is None:
        raise ValueError('the expert file records no weights fingerprint, so the UNet cannot be '
                         'checked: export the checkpoint again (tools/export.py or '
                         'save_checkpoint), or pass allow_other_weights=True')
    mismatch = fingerprint_mismatch(experts.weights_fingerprint, unet)
    if mismatch:
        raise ValueError(f'this UNet is not the one the experts were trained with: {mismatch}. '
                         'Load the checkpoint\'s UNet (pipe.unet = load_unet(CHECKPOINT)), or '
                         'pass allow_other_weights=True to route other weights on purpose')


class ExpertRouter:
    """Hard skipping on a UNet, switched per timestep by a host-side lookup.

    ``select(t)`` looks up ``route[round(t)]`` in a Python tuple and hands the
    expert's Python-bool mask to the gating: no device tensor is read, so there
    is no sync per step or per unit. ``remove()`` restores the dense UNet.

    Raises if the UNet is not the architecture the experts were trained for,
    if its pruning space does not give the expert file's units, or (unless
    ``allow_other_weights``) if its weights are not the trained ones.

    ``gating``: the gating already installed on these units (a model in
    training, ``ALTER.gating``), driven instead of installing another one;
    ``remove()`` then removes it.
    """

    def __init__(self, unet: nn.Module, experts: ExpertSet,
                 allow_other_weights: bool = False, gating: Optional[UnitGating] = None) -> None:
        backbone_of(unet, 'routed inference')
        expected = experts.architecture.get('key')
        if expected is not None and architecture_key(unet) != expected:
            raise ValueError('the experts were trained for another UNet architecture '
                             f'(key {expected}, this UNet {architecture_key(unet)}); '
                             'load the UNet saved with them')
        units = PRUNING_SPACES.build(dict(type=experts.space)).find(unet)
        names = tuple(u.name for u in units)
        if names != experts.unit_names:
            raise ValueError(f'the {experts.space!r} units of this UNet ({len(names)}) do not '
                             f'match the expert file ({len(experts.unit_names)} units)')
        paths = tuple(u.path for u in units)
        if experts.unit_paths is not None and paths != experts.unit_paths:
            unit = next(i for i, (a, b) in enumerate(zip(paths, experts.unit_paths)) if a != b)
            raise ValueError(f'the {experts.space!r} units of this UNet do not match the expert '
                             f'file: unit {names[unit]} is {paths[unit]} here but '
                             f'{experts.unit_paths[unit]} in the file (was its space changed?)')
        if gating is not None and [u.module for u in gating.units] != [u.module for u in units]:
            raise ValueError(f'the given gating is not on the {experts.space!r} units of this '
                             'UNet; pass the gating installed on them')
        if not allow_other_weights:
            check_weights(unet, experts)
        self.unet = unet
        self.experts = experts
        self.gating = UnitGating(units) if gating is None else gating
        self.current = None

    def select(self, timestep: float) -> int:
        """Switch to the expert of ``timestep``; returns its id."""
        return self.use(self.experts.expert_at(timestep))

    def use(self, expert: int) -> int:
        """Switch to expert ``expert``; returns it."""
        if expert != self.current:
            self.gating.set_keep(self.experts.masks[expert])
            self.current = expert
        return expert

    def dense(self) -> None:
        """Run every unit until the next ``select``."""
        self.gating.set_keep(None)
        self.current = None

    def remove(self) -> None:
        """Give the UNet its original, dense forwards back."""
        self.gating.remove()


def _call(forward: Callable, *args, **kwargs):
    return forward(*args, **kwargs)


def _expert_entry(expert: int) -> Callable:
    """``_call`` under a code object of its own for ``expert``.

    torch.compile keeps its compiled graphs per code object and recompiles one
    code object at most ``torch._dynamo.config.recompile_limit`` (8) times. Each
    expert is a different graph, so through one shared entry the ninth expert
    would silently run uncompiled; with an entry per expert each compiles once.
    """
    code = _call.__code__.replace(co_name=f'expert_{expert}_forward')
    return types.FunctionType(code, _call.__globals__, code.co_name)


def call_timestep(timestep) -> List[float]:
    """The timestep values of one UNet call on the host: a scalar, or one per sample.

    Reading a device tensor syncs the device once per call.
    """
    if torch.is_tensor(timestep):
        return [float(v) for v in timestep.reshape(-1).tolist()]
    return [float(timestep)]


class TimestepRouting:
    """Installed as ``unet.forward``: every call runs the expert of the timestep it receives.

    The routing travels with the UNet: a ``copy.deepcopy`` of a routed UNet is
    routed by its own copy, and any pipeline calling the UNet -- at any point of
    any schedule -- gets the expert of the value it passes.

    Under ``torch.compile`` this frame runs eagerly (the host read would break
    the graph) and each expert's forward is compiled once, through its own
    entry (``_expert_entry``), for ``torch.compile(unet)`` and ``unet.compile()``
    alike, with or without ``fullgraph``.
    """

    def __init__(self, router: ExpertRouter) -> None:
        unet = router.unet
        if isinstance(unet.__dict__.get('forward'), TimestepRouting):
            raise RuntimeError('this UNet is already routed by timestep; remove() that routing '
                               'first')
        self.router = router
        self.forward = unet.forward  # the UNet's own forward, bound to it
        # Pipelines pass the timestep positionally (UNets, DiT) or by keyword (PixArt,
        # SD3, Flux, which take other arguments first): bound by the forward's signature.
        self._signature = inspect.signature(self.forward)
        self._saved = unet.__dict__.get('forward')  # an instance forward (another hook) or None
        self._entries = [_expert_entry(e) for e in range(router.experts.num_experts)]
        unet.forward = self

    @property
    def experts(self) -> ExpertSet:
        return self.router.experts

    # Not traced (recursive=False): only the expert entry it calls is compiled.
    @torch.compiler.disable(recursive=False)
    def __call__(self, *args, **kwargs):
        """The model's ``forward`` under the expert of the ``timestep`` argument."""
        timestep = self._signature.bind_partial(*args, **kwargs).arguments['timestep']
        expert = self._select(timestep)
        return self._entries[expert](self.forward, *args, **kwargs)

    @torch.compiler.disable  # host-side work, never traced
    def _select(self, timestep) -> int:
        values = call_timestep(timestep)
        experts = {self.experts.expert_at(t) for t in values}
        if len(experts) != 1:
            raise ValueError(f'one UNet call runs one expert, but its timesteps {values} belong '
                             f'to experts {sorted(experts)}; call the UNet once per timestep')
        return self.router.use(experts.pop())

    def remove(self) -> None:
        """Give the UNet its forward back; the router's gating stays (``router.remove()``)."""
        if self._saved is None:
            del self.router.unet.forward
        else:
            self.router.unet.forward = self._saved


def uncompiled(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``torch.compile(module)`` wrapper, or ``module`` itself."""
    return getattr(module, '_orig_mod', module)


def timestep_routing(unet: torch.nn.Module) -> Optional[TimestepRouting]:
    """The ``TimestepRouting`` installed on ``unet`` (or on the module a
    ``torch.compile`` wrapper holds), None if it has none."""
    routing = uncompiled(unet).__dict__.get('forward')
    return routing if isinstance(routing, TimestepRouting) else None
