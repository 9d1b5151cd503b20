"""Pruning spaces: which layers of a diffusers denoiser are units.

A unit is one prunable layer (ALTER_SPEC §3, §6b). ``PruningSpace.find(model)``
returns the units in one stable order, the order the model executes them; the
model's backbone adapter (``alter.units.backbones``) walks it. For UNets::

    down.0 .. down.{n-1}   (per block: res.0, attn.0, res.1, attn.1, ...)
    mid                    (res.0, attn.0, res.1)
    up.0 .. up.{m-1}       (per block: res.0, attn.0, res.1, attn.1, ...)

Names read ``<level>[.<block>].<res|attn>.<index>[.<k>]``, e.g. ``down.1.res.1``,
``mid.attn.0``, ``up.3.attn.2``; the trailing ``.k`` appears only for the
``paper`` space when one ``Transformer2DModel`` holds several
``BasicTransformerBlock``s (SDXL-style depth). Transformers (DiT, PixArt-alpha,
SD3, Flux) have one unit per block, named ``block.<i>``, ``joint.<i>`` or
``double.<i>`` / ``single.<i>``, in the ``paper`` space (the only one that
applies to them). A unit's bypass is described in ``alter.units.unit``.
"""
from typing import List

from torch import nn

from alter.registry import PRUNING_SPACES
from alter.units.backbones import backbone_of
from alter.units.unit import Unit


class PruningSpace:
    """Contract: ``find(model) -> list[Unit]`` in the documented order.

    Subclasses choose the UNet attention granularity (``whole_transformer``) and
    whether channel-changing resnets may fall back to their 1x1 shortcut.
    """

    name: str
    whole_transformer: bool = False
    allow_shortcut: bool = False

    def find(self, model: nn.Module) -> List[Unit]:
        backbone = backbone_of(model, f'pruning space {self.name!r}')
        units = list(backbone.units(model, self))
        if not units:
            raise ValueError(f'pruning space {self.name!r} found no units in '
                             f'{type(model).__name__}; it needs ResnetBlock2D / '
                             'Transformer2DModel children in down/mid/up blocks, or '
                             'transformer blocks')
        return units


class PaperSpace(PruningSpace):
    """Every ``BasicTransformerBlock`` + every resnet its residual can bypass
    (the paper's choice; 34 units on SD2.1); every block of a transformer."""

    name = 'paper'


class BlockSpace(PruningSpace):
    """Every whole ``Transformer2DModel`` (a skipped one is an exact identity)
    + the same resnets as ``paper`` (34 units on SD2.1); UNets only."""

    name = 'block'
    whole_transformer = True


class ShortcutSpace(PruningSpace):
    """``paper`` plus channel-changing resnets reduced to their 1x1
    ``conv_shortcut`` (38 units on SD2.1); UNets only."""

    name = 'shortcut'
    allow_shortcut = True


for _space in (PaperSpace, BlockSpace, ShortcutSpace):
    PRUNING_SPACES.register_module(_space.name, module=_space)
