"""Routed execution: each timestep runs its expert, skipped units really skipped."""
from diffusers import UNet2DConditionModel

from alter.inference.experts import ExpertSet
from alter.registry import PRUNING_SPACES
from alter.units.gating import UnitGating
from alter.units.macs import architecture_key


class ExpertRouter:
    """Hard skipping on a UNet, switched per timestep by a host-side lookup.

    ``select(t)`` looks up ``route[round(t)]`` in a Python tuple and hands the
    expert's Python-bool mask to the gating: no device tensor is read, so there
    is no sync per step or per unit. ``remove()`` restores the dense UNet.

    Raises if the UNet is not the architecture the experts were trained for, or
    if its pruning space does not give the expert file's units.
    """

    def __init__(self, unet: UNet2DConditionModel, experts: ExpertSet) -> None:
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f'routed inference needs a diffusers UNet2DConditionModel, got '
                            f'{type(unet).__name__}')
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
        self.experts = experts
        self.gating = UnitGating(units)
        self.current = None

    def select(self, timestep: float) -> int:
        """Switch to the expert of ``timestep``; returns its id."""
        expert = self.experts.expert_at(timestep)
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
