"""Real reference images for FID/KID/CMMD, and the protocol's resize.

FID protocols compare generated and real images at one size (256 px for the
paper's COCO numbers): ``resize_square`` center-crops to a square and resizes
with antialiased bicubic interpolation (PIL's filter), and ``ReferenceImages``
applies the same to a folder of real images (e.g. COCO ``val2014/``).
"""
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from alter.registry import DATASETS
from alter.utils.images import to_rgb

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, size, size): center square crop, antialiased bicubic resize."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = images[..., top:top + side, left:left + side]
    if side == size:
        return square
    resized = F.interpolate(square.float(), size=(size, size), mode='bicubic',
                            align_corners=False, antialias=True)
    return resized.clamp(-1, 1)


@DATASETS.register_module()
class ReferenceImages:
    """The images of a folder (sorted by name), as ``{'image': (3, size, size)}`` in [-1, 1].

    Args:
        root: folder of real images (``.jpg``, ``.png``, ...).
        size: side after ``resize_square``; None keeps each image's own size.
        limit: use only the first ``limit`` images (e.g. 30000).
    """

    def __init__(self, root: str, size: Optional[int] = 256, limit: Optional[int] = None) -> None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f'reference image folder not found: {folder}; pass real '
                                    'images (e.g. COCO val2014/) with --reference')
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
        self.files = self.files[:limit]
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        with Image.open(self.files[index]) as image:
            pixels = np.array(to_rgb(image))
        image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
        if self.size is not None:
            image = resize_square(image[None], self.size)[0]
        return dict(image=image)
