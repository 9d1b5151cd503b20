"""Attribute classifier for Shapes-T2I images: does an image show what its caption asks for?

Objects in an image are unordered, but the colours of one image's objects are
distinct (Shapes-T2I draws them so), so the classifier keys objects by colour:
one *slot* per named colour. Design:

1. **Colour maps** (fixed, not learned): per pixel, a soft assignment to the 8
   palette colours or to "none", ``softmax(-|rgb - c|^2 / 2 sigma^2)`` with "none" at
   distance ``radius`` (``colour_maps``). Map c is the silhouette of the colour-c object.
2. **Slot network** (learned), one set of weights applied to each of the 8 maps: from a
   one-channel silhouette it predicts whether the object is there, its shape (6), its
   size (2) and its centre (soft-argmax of a heatmap, pixels). It never sees which
   colour it is looking at, so shape and colour are factorised by construction and
   unseen colour-shape pairs (the ``heldout`` split) are classified like seen ones.
3. **Background head** (learned): a small CNN on the RGB image, pooled per band of
   rows, 5 classes.
4. **Relation** (derived, no head): of object A to object B from their predicted
   centres — the axis of the larger offset decides left/right vs above/below and
   its sign which one. Shapes-T2I places pairs so the on-axis offset is at least
   twice the off-axis offset and at least 10 px, so this is exact for true centres.

Scoring an image against its caption's labels (``score``): each named object's colour
is present, with the named shape, and the named size when the caption says a size;
no other colour is present (``count``); the relation holds; the background matches.
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alter.datasets.shapes import (BACKGROUNDS, COLOURS, IMAGE_SIZE, RELATIONS, SHAPES, SIZES,
                                   attribute_indices)
from alter.evaluation.features import PathLike, check_images
from alter.evaluation.weights import CHECKPOINT_DIR, load_module

NUM_COLOURS = len(COLOURS)
# Attributes scored per image; 'all' is their conjunction over the attributes asked.
ATTRIBUTES = ('colour', 'shape', 'size', 'count', 'relation', 'background')


def colour_maps(images: torch.Tensor, sigma: float, radius: float) -> torch.Tensor:
    """Soft palette assignment (B, 8, H, W) in [0, 1] of images (B, 3, H, W) in [-1, 1].

    ``sigma`` and ``radius`` are in 0-255 RGB units; a pixel farther than ``radius``
    from every palette colour goes mostly to "none" (dropped from the output).
    """
    palette = torch.tensor(list(COLOURS.values()), dtype=images.dtype, device=images.device)
    pixels = (images + 1) * 127.5  # (B, 3, H, W) in [0, 255]
    distance2 = ((pixels[:, None] - palette[None, :, :, None, None]) ** 2).sum(2)  # (B, 8, H, W)
    none = torch.full_like(distance2[:, :1], radius ** 2)
    logits = -torch.cat([distance2, none], 1) / (2 * sigma ** 2)
    return logits.softmax(1)[:, :NUM_COLOURS]


class SlotNet(nn.Module):
    """Silhouette (N, 1, 32, 32) -> presence logit (N,), shape logits (N, 6),
    size logits (N, 2), centre (N, 2) as (x, y) pixels (y down)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            # Space-to-depth instead of a full-resolution first convolution: lossless,
            # and 4x fewer positions for the most expensive layer on CPU.
            nn.PixelUnshuffle(2),                                              # 4 x 16x16
            nn.Conv2d(4, w, 3, padding=1), nn.ReLU(),                          # 16x16
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),            # 8x8
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU())                  # 8x8
        self.heatmap = nn.Conv2d(2 * w, 1, 1)
        self.head = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(),
                                  nn.Linear(4 * w, 1 + len(SHAPES) + len(SIZES)))

    def forward(self, silhouettes: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps = self.trunk(silhouettes)  # (N, 2w, 8, 8)
        pooled = torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], 1)  # (N, 4w)
        presence, shape, size = self.head(pooled).split([1, len(SHAPES), len(SIZES)], 1)
        weights = self.heatmap(maps).flatten(1).softmax(1)  # (N, 64) over the 8x8 cells
        cells = maps.shape[-1]
        cell_centres = (torch.arange(cells, dtype=maps.dtype, device=maps.device) + 0.5) \
            * (IMAGE_SIZE / cells)
        ys, xs = torch.meshgrid(cell_centres, cell_centres, indexing='ij')
        centre = weights @ torch.stack([xs.flatten(), ys.flatten()], 1)  # (N, 2)
        return dict(presence=presence[:, 0], shape=shape, size=size, centre=centre)


class AttributeClassifier(nn.Module):
    """Per-colour slots (see the module docstring) plus a background head.

    Args:
        width: channels of the slot network's first convolution.
        sigma, radius: of ``colour_maps``, in 0-255 RGB units.

    ``forward(images (B, 3, 32, 32) in [-1, 1])`` returns logits and centres:
    ``presence`` (B, 8), ``shape`` (B, 8, 6), ``size`` (B, 8, 2), ``centre`` (B, 8, 2),
    ``background`` (B, 5); slot c is colour ``tuple(COLOURS)[c]``.
    """

    def __init__(self, width: int = 32, sigma: float = 20.0, radius: float = 45.0) -> None:
        super().__init__()
        self.config = dict(width=width, sigma=sigma, radius=radius)
        self.sigma, self.radius = sigma, radius
        self.slots = SlotNet(width)
        # Pooled per band of rows, not globally: a gradient is told from a plain
        # background by how its top and bottom differ.
        self.background = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d((4, 1)), nn.Flatten(), nn.Linear(128, len(BACKGROUNDS)))

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        check_images(images)
        if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f'the attribute classifier takes Shapes-T2I images of '
                             f'{IMAGE_SIZE}x{IMAGE_SIZE}, got {tuple(images.shape[-2:])}')
        batch = images.shape[0]
        silhouettes = colour_maps(images, self.sigma, self.radius).reshape(-1, 1, IMAGE_SIZE,
                                                                           IMAGE_SIZE)
        out = {k: v.reshape(batch, NUM_COLOURS, *v.shape[1:])
               for k, v in self.slots(silhouettes).items()}
        out['background'] = self.background(images)
        return out

    def loss(self, images: torch.Tensor, attributes: Sequence[dict]) -> Dict[str, torch.Tensor]:
        """Training losses for images (B, 3, 32, 32) and their Shapes-T2I ``attributes``:
        presence BCE on all slots; shape, size CE and centre L1 (in pixels / 32) on the
        slots of objects present; background CE."""
        out = self(images)
        targets = slot_targets(attributes, images.device)
        present = targets['present']
        return dict(
            loss_presence=F.binary_cross_entropy_with_logits(out['presence'], present.float()),
            loss_shape=F.cross_entropy(out['shape'][present], targets['shape'][present]),
            loss_size=F.cross_entropy(out['size'][present], targets['size'][present]),
            loss_centre=F.l1_loss(out['centre'][present], targets['centre'][present])
            / IMAGE_SIZE,
            loss_background=F.cross_entropy(out['background'], targets['background']))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Hard predictions: ``present`` (B, 8) bool, ``shape``, ``size`` (B, 8) class indices,
        ``centre`` (B, 8, 2) pixels, ``background`` (B,) class index."""
        out = self(images)
        return dict(present=out['presence'] > 0, shape=out['shape'].argmax(-1),
                    size=out['size'].argmax(-1), centre=out['centre'],
                    background=out['background'].argmax(-1))


def slot_targets(attributes: Sequence[dict], device: torch.device) -> Dict[str, torch.Tensor]:
    """Per-slot labels of Shapes-T2I ``attributes`` dicts in ``predict``'s format (what a
    perfect classifier predicts); slots of absent colours hold 0."""
    batch = len(attributes)
    present = torch.zeros(batch, NUM_COLOURS, dtype=torch.bool)
    shape = torch.zeros(batch, NUM_COLOURS, dtype=torch.long)
    size = torch.zeros(batch, NUM_COLOURS, dtype=torch.long)
    centre = torch.zeros(batch, NUM_COLOURS, 2)
    background = torch.zeros(batch, dtype=torch.long)
    for b, attrs in enumerate(attributes):
        idx = attribute_indices(attrs)
        for obj, c, s, z in zip(attrs['objects'], idx['colour'], idx['shape'], idx['size']):
            present[b, c], shape[b, c], size[b, c] = True, s, z
            centre[b, c] = torch.tensor(obj['centre'])
        background[b] = idx['background']
    targets = dict(present=present, shape=shape, size=size, centre=centre, background=background)
    return {k: v.to(device) for k, v in targets.items()}


def relation_of(centre_a: Sequence[float], centre_b: Sequence[float]) -> str:
    """Relation of an object at ``centre_a`` (x, y; y down) to one at ``centre_b``."""
    dx, dy = centre_a[0] - centre_b[0], centre_a[1] - centre_b[1]
    names = tuple(RELATIONS)  # 'left of', 'right of', 'above', 'below'
    if abs(dx) >= abs(dy):
        return names[0] if dx < 0 else names[1]
    return names[2] if dy < 0 else names[3]


def score(predictions: Dict[str, torch.Tensor], attributes: Sequence[dict],
          every_label: bool = False) -> List[Dict[str, Optional[bool]]]:
    """Per image, whether each attribute its caption asks for is right (None: not asked).

    ``predictions`` from ``AttributeClassifier.predict``; ``attributes`` are the
    Shapes-T2I label dicts of the captions. Keys: ``ATTRIBUTES`` and ``all``; ``size``
    is asked when the caption names a size (every object's size with
    ``every_label``, to measure the classifier itself), ``relation`` for two objects.
    A named object whose colour is absent has neither its shape nor its size right.
    """
    present = predictions['present'].cpu()
    shape, size = predictions['shape'].cpu(), predictions['size'].cpu()
    centre, background = predictions['centre'].cpu(), predictions['background'].cpu()
    results = []
    for b, attrs in enumerate(attributes):
        idx = attribute_indices(attrs)
        colours = idx['colour']
        found = [bool(present[b, c]) for c in colours]
        sized = [(c, z) for o, c, z in zip(attrs['objects'], colours, idx['size'])
                 if every_label or o['size_in_caption']]
        result: Dict[str, Optional[bool]] = dict(
            colour=all(found),
            shape=all(f and int(shape[b, c]) == s for f, c, s in zip(found, colours, idx['shape'])),
            size=all(bool(present[b, c]) and int(size[b, c]) == z for c, z in sized)
            if sized else None,
            count=int(present[b].sum()) == len(colours),
            relation=None if attrs['relation'] is None else
            all(found) and relation_of(centre[b, colours[0]].tolist(),
                                       centre[b, colours[1]].tolist()) == attrs['relation'],
            background=int(background[b]) == idx['background'])
        result['all'] = all(v for v in result.values() if v is not None)
        results.append(result)
    return results


def summarise(results: Sequence[Dict[str, Optional[bool]]]) -> Dict[str, float]:
    """Accuracy per key of ``score``'s results over the images where it was asked
    (NaN when never asked)."""
    summary = {}
    for key in ('all',) + ATTRIBUTES:
        asked = [r[key] for r in results if r[key] is not None]
        summary[key] = sum(asked) / len(asked) if asked else math.nan
    return summary


DEFAULT_WEIGHTS = CHECKPOINT_DIR / 'attribute_classifier.safetensors'


def load_attribute_classifier(path: Optional[PathLike] = None) -> AttributeClassifier:
    """The trained classifier of ``tools/train_attribute_classifier.py`` (frozen, eval)."""
    path = Path(path or DEFAULT_WEIGHTS)
    return load_module(AttributeClassifier, path, 'attribute classifier',
                       f'python tools/train_attribute_classifier.py --out {path}  (about 10 min on one CPU core)')
