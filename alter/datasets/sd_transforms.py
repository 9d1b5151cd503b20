"""Stable-Diffusion image preprocessing: shorter side to R, crop R x R, optional flip, to [-1, 1].

The same steps as diffusers' ``train_text_to_image.py``, with the randomness
taken from a ``torch.Generator`` the caller passes, so a dataset can seed it
per sample and a resumed run sees the same crops and flips.
"""
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from alter.registry import TRANSFORMS


@TRANSFORMS.register_module()
class SDImageTransform:
    """RGB PIL image -> float32 (3, resolution, resolution) in [-1, 1].

    Args:
        resolution: side R of the square output, in pixels.
        center_crop: crop the centre; False crops at a position drawn from the generator.
        random_flip: flip horizontally with probability 1/2, drawn from the generator.
    """

    def __init__(self, resolution: int = 512, center_crop: bool = True,
                 random_flip: bool = False) -> None:
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f'resolution must be a positive int (pixels), got {resolution!r}')
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        if image.mode != 'RGB':
            raise ValueError(f"{type(self).__name__} takes RGB images, got mode {image.mode!r}; "
                             f"convert with image.convert('RGB') first")
        r = self.resolution
        pixels = F.pil_to_tensor(image)  # uint8 (3, H, W)
        # Antialiased bilinear on uint8 matches PIL's resize and takes torchvision's fast path.
        pixels = F.resize(pixels, size=r, interpolation=InterpolationMode.BILINEAR,
                          antialias=True)  # shorter side = r
        height, width = pixels.shape[-2:]
        if self.center_crop:
            pixels = F.center_crop(pixels, [r, r])
        else:
            top = int(torch.randint(height - r + 1, (1,), generator=generator))
            left = int(torch.randint(width - r + 1, (1,), generator=generator))
            pixels = F.crop(pixels, top, left, r, r)
        if self.random_flip and bool(torch.rand(1, generator=generator) < 0.5):
            pixels = F.horizontal_flip(pixels)
        return pixels.to(torch.float32) / 127.5 - 1.0

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(resolution={self.resolution}, '
                f'center_crop={self.center_crop}, random_flip={self.random_flip})')
