"""Generated images on disk, one PNG per prompt index, so a stopped run continues.

A store is a folder ``<dir>/`` with ``00000.png, 00001.png, ...`` and
``settings.json`` (what generated them: the caller keys it on the prompt texts,
weights, sampler settings, ...). Reopening a store with other settings raises
instead of mixing images of two runs.
Images are written atomically; metrics read the PNGs back, so they score
exactly the 8-bit images a user would save. Several processes (the ranks of a
distributed evaluation) can fill one store: each opens it with the same settings
and writes only the images of its own shard of the indices (``missing``), one file
per image, so no two processes write the same file.
"""
import json
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from alter.utils.cli import InputError
from alter.utils.io import atomic_write, atomic_write_json

SETTINGS_FILE = 'settings.json'


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8, rounded."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
    return rearrange(pixels.to(torch.uint8), 'b c h w -> b h w c').cpu().numpy()


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return rearrange(torch.from_numpy(pixels), 'b h w c -> b c h w').float() / 127.5 - 1


class ImageStore:
    """PNG images of one method's generations, indexed by prompt number."""

    def __init__(self, root, settings: dict) -> None:
        self.root = Path(root)
        path = self.root / SETTINGS_FILE
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored != json.loads(json.dumps(settings)):
                changed = sorted(k for k in set(stored) | set(settings)
                                 if stored.get(k) != settings.get(k))
                raise InputError(f'{self.root} holds images generated with other settings '
                                 f'(differing: {changed}); use another --work-dir or delete it')
        else:
            atomic_write_json(path, settings)

    def path(self, index: int) -> Path:
        return self.root / f'{index:05d}.png'

    def missing(self, count: int, rank: int = 0, world_size: int = 1) -> List[int]:
        """Indices below ``count`` without an image yet, of shard ``rank`` of
        ``world_size``: every ``world_size``-th index from ``rank`` on."""
        return [i for i in range(rank, count, world_size) if not self.path(i).is_file()]

    def save(self, indices: Sequence[int], images: torch.Tensor) -> None:
        for index, pixels in zip(indices, to_uint8(images)):
            atomic_write(self.path(index),
                         lambda tmp, p=pixels: Image.fromarray(p).save(tmp, format='PNG'))

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        """(len(indices), 3, H, W) float in [-1, 1]."""
        return from_uint8(np.stack([np.asarray(Image.open(self.path(i)).convert('RGB'))
                                    for i in indices]))
