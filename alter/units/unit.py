"""A unit: one prunable layer of a denoiser, and how a skipped one computes its output.

How a skipped unit computes its output (its *bypass*) is part of the unit:

* ``identity``   -- ``x`` (resnets with in == out channels, transformer blocks);
* ``slice``      -- ``x[:, :C]`` for up-block resnets whose input is
  ``cat([h, skip])`` and whose ``h`` already has the output width C: skipping
  drops the skip-connection tensor (the up block still pops it);
* ``shortcut``   -- ``conv_shortcut(x)`` for channel-changing resnets (``shortcut``
  space only);
* ``joint``      -- ``(encoder_hidden_states, hidden_states)`` unchanged: a block
  carrying a text and an image stream (SD3 joint blocks, Flux double- and
  single-stream blocks) is the identity on both;
* ``joint_last`` -- ``(None, hidden_states)``: the joint block that ends the text
  stream (SD3's last block, ``context_pre_only``), which returns no text stream.
"""
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

BYPASSES = ('identity', 'slice', 'shortcut', 'joint', 'joint_last')


@dataclass(frozen=True)
class Unit:
    """One prunable layer of a denoiser (UNet or transformer).

    Attributes:
        name: readable, stable name, e.g. ``up.3.attn.2`` or ``single.7``.
        path: the module's name inside the model (``model.get_submodule(path)``).
        kind: ``res`` or ``attn`` (UNets, DiT, PixArt), ``joint`` (SD3 and Flux
            double-stream blocks) or ``single`` (Flux single-stream blocks).
        bypass: one of ``BYPASSES`` (see module docstring).
        module: the diffusers module itself.
        keep_channels: C of the ``slice`` bypass, else None.
    """

    name: str
    path: str
    kind: str
    bypass: str
    module: nn.Module = field(compare=False, repr=False)
    keep_channels: Optional[int] = None
