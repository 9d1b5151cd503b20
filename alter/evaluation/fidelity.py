"""Per-image fidelity of images to references: PSNR and SSIM.

Both take image batches (B, 3, H, W) in [-1, 1], compare them in [0, 1] (data range
1) and return per-image values (B,) float64 on the images' device.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

# Wang et al. 2004: 11x11 Gaussian window, sigma 1.5; C1 = (K1 L)^2, C2 = (K2 L)^2, L = 1.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _unit_range(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both batches in [0, 1] as float64, after checking they are alike (B, 3, H, W)."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f'expected two image batches of one shape (B, 3, H, W), got '
                         f'{tuple(a.shape)} and {tuple(b.shape)}')
    return (a.double() + 1) / 2, (b.double() + 1) / 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (B,) in dB of images a, b (B, 3, H, W) in [-1, 1]: ``10 log10(1 / MSE)`` in
    [0, 1] units, the MSE over channels and pixels; identical images give ``inf``."""
    a, b = _unit_range(a, b)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse)  # 1 / 0 = inf in floating point: no special case


def _gaussian_window(device: torch.device) -> torch.Tensor:
    """(11,) normalised Gaussian taps, sigma 1.5 (scipy's ``gaussian_filter`` with
    ``truncate=3.5``, as skimage's SSIM uses)."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - SSIM_WINDOW // 2
    taps = torch.exp(-offsets ** 2 / (2 * SSIM_SIGMA ** 2))
    return taps / taps.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (B,) of images a, b (B, 3, H, W) in [-1, 1] (Wang et al. 2004).

    Local means, variances and covariance under an 11x11 Gaussian window (sigma 1.5),
    population (not sample) statistics, K1 = 0.01, K2 = 0.03, data range 1; the SSIM
    map is computed per channel on the 'valid' region (no padding: H - 10 by W - 10)
    and averaged over channels and pixels. This equals
    ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)`` on [0, 1] images,
    which also crops the window's 5-pixel reach from its map
    (``tests/test_reference_parity.py`` checks it).
    """
    a, b = _unit_range(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f'SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, '
                         f'got {tuple(a.shape[-2:])}')
    taps = _gaussian_window(a.device)
    rows = taps.view(1, 1, 1, SSIM_WINDOW).expand(3, 1, 1, SSIM_WINDOW)
    columns = taps.view(1, 1, SSIM_WINDOW, 1).expand(3, 1, SSIM_WINDOW, 1)

    def local_mean(x: torch.Tensor) -> torch.Tensor:  # separable window, per channel
        return F.conv2d(F.conv2d(x, rows, groups=3), columns, groups=3)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a ** 2
    var_b = local_mean(b * b) - mu_b ** 2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / \
        ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2, 3))
