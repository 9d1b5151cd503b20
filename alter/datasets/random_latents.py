"""Seeded random (latent, context) pairs: exercises training code without data."""
import torch
from torch.utils.data import Dataset

from alter.registry import DATASETS


@DATASETS.register_module()
class RandomLatents(Dataset):
    """Sample i is ``latents`` (C, h, w) and ``context`` (L, D) drawn from a
    generator seeded by (seed, i): any index renders alone, in any worker.

    The latents are smooth (a low-resolution field upsampled) rather than white
    noise, so denoising them is a learnable task.
    """

    def __init__(self, num_samples: int, latent_shape: tuple, context_shape: tuple,
                 seed: int = 0) -> None:
        self.num_samples, self.seed = num_samples, seed
        self.latent_shape, self.context_shape = tuple(latent_shape), tuple(context_shape)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        c, h, w = self.latent_shape
        coarse = torch.randn(1, c, max(h // 4, 1), max(w // 4, 1), generator=g)
        latents = torch.nn.functional.interpolate(coarse, size=(h, w), mode='bilinear')[0]
        return dict(latents=latents, context=torch.randn(self.context_shape, generator=g))
