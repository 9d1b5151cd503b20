"""Parity with the reference implementations (test-only dependencies of the ``tests``
extra; each test skips where its package is not installed): SSIM against scikit-image's
``structural_similarity``, FID statistics, Fréchet distance and the FID Inception against
pytorch-fid."""
import os
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from alter.datasets.shapes import ShapesT2I
from alter.evaluation.distances import FeatureStats, frechet_distance
from alter.evaluation.features import (INCEPTION_WEIGHTS_FILE, EfficientNetLite0Features,
                                       InceptionFeatures, extract_features, fid_inception_v3)
from alter.evaluation.fidelity import ssim
from alter.evaluation.image_store import to_uint8
from alter.registry import METRICS


def _renders(split: str, num: int) -> torch.Tensor:
    """(num, 3, 32, 32) Shapes-T2I renders in [-1, 1]."""
    dataset = ShapesT2I(split, num, seed=0)
    return torch.stack([dataset[i]['image'] for i in range(num)])


def _photo() -> torch.Tensor:
    """matplotlib's Grace Hopper portrait, (1, 3, 600, 512) in [-1, 1]."""
    photo = Image.open(os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg'))
    return torch.from_numpy(np.array(photo.convert('RGB'))).permute(2, 0, 1).float()[None] / 127.5 - 1


def _degraded(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Noisy, slightly darkened copies of images in [-1, 1]."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (0.9 * images + 0.15 * noise).clamp(-1, 1)


# --- SSIM vs scikit-image ------------------------------------------------------------------

@pytest.mark.parametrize('images', ['renders', 'photo'])
def test_ssim_equals_scikit_image(images):
    metrics = pytest.importorskip('skimage.metrics')
    a = _renders('val', 6) if images == 'renders' else _photo()
    b = _degraded(a, seed=1)
    ours = ssim(a, b)
    # The arguments that reproduce Wang et al.'s SSIM as alter computes it: an 11x11
    # Gaussian window of sigma 1.5 (scipy's truncate 3.5 gives the 11 taps), population
    # statistics, K1 = 0.01, K2 = 0.03 (skimage's defaults), data range 1 on [0, 1] images,
    # per channel then averaged; skimage crops the window's reach, alter filters 'valid'.
    def reference(**settings) -> np.ndarray:
        return np.array([metrics.structural_similarity(
            x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy(), data_range=1.0,
            channel_axis=-1, **settings) for x, y in zip((a.double() + 1) / 2, (b.double() + 1) / 2)])

    wang = reference(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    np.testing.assert_allclose(ours.numpy(), wang, rtol=1e-9)
    assert 0.05 < wang.min() and wang.max() < 0.95  # neither identical nor unrelated
    # skimage's defaults (7x7 uniform window, sample covariance) are another SSIM.
    assert np.abs(reference() - wang).max() > 1e-3


# --- FID statistics and Fréchet distance vs pytorch-fid -------------------------------------

def _pytorch_fid_distance(fid_score, *stats: np.ndarray) -> float:
    """pytorch-fid's ``calculate_frechet_distance(mu1, sigma1, mu2, sigma2)``, quiet: scipy
    warns that a singular product's square root may be inaccurate."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return float(fid_score.calculate_frechet_distance(*stats))


class _ZeroOneInput(nn.Module):
    """pytorch-fid's model contract on top of an alter extractor: images (B, 3, H, W) in
    [0, 1] -> [features (B, D, 1, 1)]."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> list:
        return [self.extractor(images * 2 - 1)[:, :, None, None]]


def test_proxy_fid_equals_pytorch_fid_on_the_same_features(tmp_path):
    fid_score = pytest.importorskip('pytorch_fid.fid_score')
    effnet = EfficientNetLite0Features()
    reference = dict(type='ShapesT2I', split='val', num_samples=24, seed=0)
    generated = _renders('heldout', 24)
    # pytorch-fid's statistics: its own image loading (PNG -> [0, 1]), batching, mean and
    # covariance, with EfficientNet-Lite0 in place of its Inception.
    files = []
    for name, images in (('reference', _renders('val', 24)), ('generated', generated)):
        (tmp_path / name).mkdir()
        for i, pixels in enumerate(to_uint8(images)):
            files.append(tmp_path / name / f'{i:02d}.png')
            Image.fromarray(pixels).save(files[-1])
    model = _ZeroOneInput(effnet)
    mu_ref, sigma_ref = fid_score.calculate_activation_statistics(
        files[:24], model, batch_size=12, dims=1280, num_workers=0)
    mu_gen, sigma_gen = fid_score.calculate_activation_statistics(
        files[24:], model, batch_size=12, dims=1280, num_workers=0)
    # alter's: features of the same images, FeatureStats merged over batches.
    features = extract_features(effnet, generated.split(10))
    stats = FeatureStats(1280)
    for chunk in np.array_split(features, 3):
        stats.update(chunk)
    # PNG values / 255 * 2 - 1 and uint8 / 127.5 - 1 round apart by an ulp.
    np.testing.assert_allclose(stats.mean, mu_gen, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.cov, sigma_gen, rtol=1e-4, atol=1e-6)
    # The Fréchet distance: pytorch-fid's scipy sqrtm of the (here singular: 24 samples in
    # 1280-d) product against alter's eigenvalue form, end to end through ProxyFID.
    fid = METRICS.build(dict(type='ProxyFID', extractor=effnet, reference=reference,
                             cache_dir=str(tmp_path / 'cache'), resamples=0))
    fid.process(None, [dict(image=image) for image in generated])
    ours = fid.compute_metrics(fid.results)['fid_efficientnet_lite0']
    theirs = _pytorch_fid_distance(fid_score, mu_gen, sigma_gen, mu_ref, sigma_ref)
    assert ours > 1 and ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize('num', [300, 40])  # more, then fewer samples than dimensions
def test_frechet_distance_equals_pytorch_fid(num):
    fid_score = pytest.importorskip('pytorch_fid.fid_score')
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(64, 64)) / 8
    a = rng.normal(size=(num, 64)) @ mixing
    b = rng.normal(size=(num, 64)) @ (mixing + 0.1 * rng.normal(size=(64, 64))) + 0.2
    mu1, sigma1, mu2, sigma2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    theirs = _pytorch_fid_distance(fid_score, mu1, sigma1, mu2, sigma2)
    # scipy's sqrtm is accurate when the product has full rank, less so when singular.
    assert ours == pytest.approx(theirs, rel=1e-9 if num > 64 else 1e-6)


# --- FID Inception vs pytorch-fid -----------------------------------------------------------

@pytest.mark.parametrize('weights', ['random', 'published'])
def test_inception_features_equal_pytorch_fid(weights, tmp_path, monkeypatch):
    inception = pytest.importorskip('pytorch_fid.inception')
    if weights == 'published':
        path = Path(torch.hub.get_dir()) / 'checkpoints' / INCEPTION_WEIGHTS_FILE
        if not path.is_file():
            pytest.skip(f'pytorch-fid\'s published FID Inception weights are not at {path}, where '
                        'pytorch-fid looks for them, and tests download nothing; the random-weights '
                        'case checks the same architecture, file format and preprocessing')
    else:  # random weights in the published file's format, where pytorch-fid looks for it
        torch.manual_seed(0)
        model = fid_inception_v3()
        for module in model.modules():  # He initialisation: features keep their scale (~1)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
        hub = tmp_path / 'hub'
        path = hub / 'checkpoints' / INCEPTION_WEIGHTS_FILE
        path.parent.mkdir(parents=True)
        torch.save(model.state_dict(), path)
        monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(hub))
    theirs_model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ours_model = InceptionFeatures(path)
    for images in (_renders('val', 2), _photo()):  # upscaled 32x32, downscaled 600x512
        with torch.no_grad():
            theirs = theirs_model((images + 1) / 2)[0].flatten(1)  # pool3 (B, 2048, 1, 1) of [0, 1]
            ours = ours_model(images)
        assert ours.shape == (len(images), 2048) and theirs.std() > 0.1
        # pytorch-fid resizes [0, 1] images, then maps them to [-1, 1]; alter resizes [-1, 1]
        # images: one affine map, before or after the resize, rounds apart.
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
