"""Tensor layouts written as einops patterns: the pixel-unshuffle latents keep torch's
layout bit for bit; the image store's pixel arrays are (B, H, W, 3)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alter.evaluation.image_store import from_uint8, to_uint8
from alter.models.conditioning import PixelUnshuffleAutoencoder


@pytest.mark.parametrize('factor, shape', [(2, (3, 3, 32, 32)), (4, (2, 5, 3, 16, 8))])
def test_pixel_unshuffle_latents_are_torch_pixel_unshuffle(factor, shape):
    autoencoder = PixelUnshuffleAutoencoder(factor)
    images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    latents = autoencoder.encode(images)
    assert latents.shape == (*shape[:-3], 3 * factor ** 2, shape[-2] // factor,
                             shape[-1] // factor)
    assert autoencoder.latent_channels == latents.shape[-3]
    assert torch.equal(latents, F.pixel_unshuffle(images, factor))
    assert torch.equal(autoencoder.decode(latents), images)  # exact inverse
    # Channel (colour, row, column) of a block holds that pixel: colour 1, row 1, column 0.
    channel = 1 * factor ** 2 + 1 * factor + 0
    assert torch.equal(latents[..., channel, :, :], images[..., 1, 1::factor, 0::factor])


def test_image_store_pixels_are_height_width_colour():
    images = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pixels = to_uint8(images)  # (B, H, W, 3)
    assert pixels.shape == (2, 5, 7, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[1, 4, 6], ((images[1, :, 4, 6] + 1) * 127.5).round())
    back = from_uint8(pixels)  # (B, 3, H, W), within 8-bit rounding of the images
    assert back.shape == images.shape and (back - images).abs().max() <= 1 / 255
    assert torch.equal(back[1, :, 4, 6], torch.from_numpy(pixels[1, 4, 6]) / 127.5 - 1)
