"""Decoding images of any bit depth to 8-bit RGB."""
import numpy as np
from PIL import Image

# PIL's modes of 16-bit grayscale (16-bit PNGs open so): convert('RGB') clips their
# values to 255 (near-white) instead of scaling them.
GRAY16_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, 16-bit grayscale scaled (65535 -> 255) rather than clipped."""
    if image.mode in GRAY16_MODES:
        wide = np.asarray(image, dtype=np.float64)  # (H, W), 0..65535
        image = Image.fromarray(np.round(wide / 257).astype(np.uint8))
    return image.convert('RGB')
