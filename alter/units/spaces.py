"""Pruning spaces: which layers of a diffusers ``UNet2DConditionModel`` are units.

A unit is one prunable layer (ALTER_SPEC §3). ``PruningSpace.find(unet)``
returns the units in one stable order, the order the UNet executes them:

    down.0 .. down.{n-1}   (per block: res.0, attn.0, res.1, attn.1, ...)
    mid                    (res.0, attn.0, res.1)
    up.0 .. up.{m-1}       (per block: res.0, attn.0, res.1, attn.1, ...)

Names read ``<level>[.<block>].<res|attn>.<index>[.<k>]``, e.g. ``down.1.res.1``,
``mid.attn.0``, ``up.3.attn.2``; the trailing ``.k`` appears only for the
``paper`` space when one ``Transformer2DModel`` holds several
``BasicTransformerBlock``s (SDXL-style depth).

How a skipped unit computes its output (its *bypass*) is part of the unit:

* ``identity``  -- ``x`` (resnets with in == out channels, transformer blocks);
* ``slice``     -- ``x[:, :C]`` for up-block resnets whose input is
  ``cat([h, skip])`` and whose ``h`` already has the output width C: skipping
  drops the skip-connection tensor (the up block still pops it);
* ``shortcut``  -- ``conv_shortcut(x)`` for channel-changing resnets (``shortcut``
  space only).
"""
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from alter.registry import PRUNING_SPACES

BYPASSES = ('identity', 'slice', 'shortcut')


@dataclass(frozen=True)
class Unit:
    """One prunable layer of a UNet.

    Attributes:
        name: readable, stable name, e.g. ``up.3.attn.2``.
        path: the module's name inside the UNet (``unet.get_submodule(path)``).
        kind: ``res`` or ``attn``.
        bypass: ``identity``, ``slice`` or ``shortcut`` (see module docstring).
        module: the diffusers module itself.
        keep_channels: C of the ``slice`` bypass, else None.
    """

    name: str
    path: str
    kind: str
    bypass: str
    module: nn.Module = field(compare=False, repr=False)
    keep_channels: Optional[int] = None


def _resnet_bypass(resnet: ResnetBlock2D, hidden_channels: int,
                   allow_shortcut: bool) -> Optional[Tuple[str, Optional[int]]]:
    """Bypass of a resnet whose non-skip input has ``hidden_channels`` channels.

    Returns None when the resnet cannot be bypassed in this space.
    """
    if resnet.upsample is not None or resnet.downsample is not None:
        return ('shortcut', None) if allow_shortcut and resnet.conv_shortcut is not None else None
    if hidden_channels == resnet.out_channels:
        if resnet.in_channels == resnet.out_channels:
            return 'identity', None
        return 'slice', hidden_channels
    if allow_shortcut and resnet.conv_shortcut is not None:
        return 'shortcut', None
    return None


class PruningSpace:
    """Contract: ``find(unet) -> list[Unit]`` in the documented order.

    Subclasses choose the attention granularity (``whole_transformer``) and
    whether channel-changing resnets may fall back to their 1x1 shortcut.
    """

    name: str
    whole_transformer: bool = False
    allow_shortcut: bool = False

    def find(self, unet: nn.Module) -> List[Unit]:
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f'pruning space {self.name!r} expects a diffusers '
                            f'UNet2DConditionModel, got {type(unet).__name__}')
        units = list(self._walk(unet))
        if not units:
            raise ValueError(f'pruning space {self.name!r} found no units in '
                             f'{type(unet).__name__}; it needs ResnetBlock2D / '
                             'Transformer2DModel children in down/mid/up blocks')
        return units

    def _walk(self, unet: UNet2DConditionModel) -> Iterator[Unit]:
        # Width of the hidden state entering each up block: the previous
        # block's output (samplers keep the channel count).
        hidden = None
        for level, blocks in (('down', unet.down_blocks), ('mid', [unet.mid_block]),
                              ('up', unet.up_blocks)):
            for b, block in enumerate(blocks):
                if block is None:
                    continue
                prefix = 'mid' if level == 'mid' else f'{level}.{b}'
                path = 'mid_block' if level == 'mid' else f'{level}_blocks.{b}'
                resnets = list(getattr(block, 'resnets', []))
                attentions = list(getattr(block, 'attentions', None) or [])
                for i in range(max(len(resnets), len(attentions))):
                    if i < len(resnets):
                        resnet = resnets[i]
                        # Down/mid resnets see only the hidden state; up
                        # resnets see cat([hidden, skip]).
                        width = resnet.in_channels if level != 'up' else hidden
                        bypass = _resnet_bypass(resnet, width, self.allow_shortcut)
                        if bypass is not None:
                            yield Unit(f'{prefix}.res.{i}', f'{path}.resnets.{i}', 'res',
                                       bypass[0], resnet, bypass[1])
                        hidden = resnet.out_channels
                    if i < len(attentions):
                        yield from self._attention_units(attentions[i], f'{prefix}.attn.{i}',
                                                         f'{path}.attentions.{i}')

    def _attention_units(self, attn: nn.Module, name: str, path: str) -> Iterator[Unit]:
        if not isinstance(attn, Transformer2DModel):
            return
        if self.whole_transformer:
            yield Unit(name, path, 'attn', 'identity', attn)
            return
        blocks = [m for m in attn.transformer_blocks if isinstance(m, BasicTransformerBlock)]
        for k, block in enumerate(blocks):
            suffix = f'.{k}' if len(blocks) > 1 else ''
            yield Unit(name + suffix, f'{path}.transformer_blocks.{k}', 'attn', 'identity', block)


class PaperSpace(PruningSpace):
    """Every ``BasicTransformerBlock`` + every resnet its residual can bypass
    (the paper's choice; 34 units on SD2.1)."""

    name = 'paper'


class BlockSpace(PruningSpace):
    """Every whole ``Transformer2DModel`` (a skipped one is an exact identity)
    + the same resnets as ``paper`` (34 units on SD2.1)."""

    name = 'block'
    whole_transformer = True


class ShortcutSpace(PruningSpace):
    """``paper`` + channel-changing resnets reduced to their 1x1
    ``conv_shortcut`` (38 units on SD2.1)."""

    name = 'shortcut'
    allow_shortcut = True


for _space in (PaperSpace, BlockSpace, ShortcutSpace):
    PRUNING_SPACES.register_module(_space.name, module=_space)
