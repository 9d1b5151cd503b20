"""CMMD, PSNR and SSIM against direct numpy/scipy computations; OpenCLIP, CLIPScore and
CMMD against open_clip's own loading, transform and encoders, on a tiny random open_clip
model registered for these tests (offline, CPU)."""
import json

import numpy as np
import open_clip
import pytest
import scipy.ndimage
import scipy.spatial.distance
import torch
from PIL import Image
from safetensors.torch import save_file

import alter.evaluation  # noqa: F401  (registers extractors and metrics)
from alter.datasets.shapes import ShapesT2I
from alter.evaluation.clip import OpenCLIP
from alter.evaluation.distances import cmmd
from alter.evaluation.fidelity import psnr, ssim
from alter.registry import METRICS, MODELS

TINY_CLIP = 'alter-test-tiny-clip'
TINY_CLIP_CONFIG = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=2, width=64, head_width=32, patch_size=8),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


# --- CMMD ----------------------------------------------------------------------------------

def _direct_cmmd(x: np.ndarray, y: np.ndarray, sigma: float, scale: float = 1000.0) -> float:
    def kernel(a, b):
        return np.exp(-scipy.spatial.distance.cdist(a, b, 'sqeuclidean') / (2 * sigma ** 2))

    return scale * (kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())


def test_cmmd_matches_direct_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 16)), rng.normal(size=(30, 16)) + 0.3
    # sigma 4: squared distances ~ 2 * 16 = 2 sigma^2, kernel values ~ exp(-1).
    assert cmmd(x, y, sigma=4.0) == pytest.approx(_direct_cmmd(x, y, 4.0), rel=1e-10)
    assert cmmd(x, y, sigma=4.0, scale=1.0) == pytest.approx(_direct_cmmd(x, y, 4.0, 1.0),
                                                               rel=1e-10)
    # The protocol's sigma 10 on unit vectors (as CLIP embeddings): kernel values near 1.
    unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit_y = y / np.linalg.norm(y, axis=1, keepdims=True)
    expected = _direct_cmmd(unit_x, unit_y, 10.0)
    assert expected > 1e-3
    assert cmmd(unit_x, unit_y) == pytest.approx(expected, rel=1e-8)
    # More rows than one block of the kernel sum.
    many = rng.normal(size=(2100, 4))
    assert cmmd(many, y[:, :4], sigma=2.0) == pytest.approx(
        _direct_cmmd(many, y[:, :4], 2.0), rel=1e-9)


def test_cmmd_is_zero_for_identical_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 8))
    assert cmmd(x, x, sigma=3.0) == pytest.approx(0, abs=1e-9)
    near, far = cmmd(x, x + 0.2, sigma=3.0), cmmd(x, x + 1.0, sigma=3.0)
    assert 0 < near < far
    with pytest.raises(ValueError, match=r'\(n, D\) and \(m, D\)'):
        cmmd(x, x[:, :4])
    with pytest.raises(ValueError, match='sigma'):
        cmmd(x, x, sigma=0.0)


# --- PSNR, SSIM ----------------------------------------------------------------------------

def _direct_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of (3, H, W) images in [0, 1]: scipy's Gaussian filter (sigma 1.5, truncate 3.5
    = 11 taps), population statistics, the 5-pixel border cropped, mean over channels."""
    def blur(x):
        return scipy.ndimage.gaussian_filter(x, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

    values = []
    for x, y in zip(a, b):
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        values.append((((2 * mx * my + c1) * (2 * cxy + c2))
                       / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean())
    return float(np.mean(values))


def test_ssim_and_psnr_match_direct_computations():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 24, 20, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 3, 24, 20, generator=g)).clamp(-1, 1)
    a01, b01 = ((a.double() + 1) / 2).numpy(), ((b.double() + 1) / 2).numpy()
    values = ssim(a, b)
    assert values.dtype == torch.float64 and values.shape == (3,)
    np.testing.assert_allclose(values.numpy(), [_direct_ssim(x, y) for x, y in zip(a01, b01)],
                               rtol=1e-10)
    assert (values < 0.9).all()
    mse = ((a01 - b01) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(a, b).numpy(), 10 * np.log10(1 / mse), rtol=1e-12)


def test_ssim_and_psnr_of_identical_and_offset_images():
    a = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double() - 0.5
    np.testing.assert_allclose(ssim(a, a).numpy(), 1.0, atol=1e-12)
    assert torch.isinf(psnr(a, a)).all()
    # +0.2 in [-1, 1] is +0.1 in [0, 1]: MSE 0.01, PSNR 20 dB.
    np.testing.assert_allclose(psnr(a, a + 0.2).numpy(), 10 * np.log10(1 / 0.01), rtol=1e-9)
    with pytest.raises(ValueError, match='one shape'):
        ssim(a, a[:, :, :8])
    with pytest.raises(ValueError, match='one shape'):
        psnr(a, a[:1])
    with pytest.raises(ValueError, match='at least 11x11'):
        ssim(a[..., :8, :8], a[..., :8, :8])


# --- OpenCLIP and the CLIP metrics ---------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_clip_weights(tmp_path_factory):
    """Random weights of the tiny open_clip config ``TINY_CLIP`` as .safetensors."""
    folder = tmp_path_factory.mktemp('tiny_clip')
    config = folder / f'{TINY_CLIP}.json'
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    path = folder / 'tiny_clip.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope='module')
def val_samples():
    dataset = ShapesT2I('val', 16, seed=0)
    return [dataset[i] for i in range(16)]


def _pil(image: torch.Tensor) -> Image.Image:
    """A [-1, 1] image made from uint8 (Shapes-T2I renders) back as the PIL image."""
    pixels = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


@torch.no_grad()
def _reference_embeddings(weights, images, captions=None, quick_gelu=False, mean=None,
                          std=None):
    """Unit embeddings from open_clip's own pipeline: its checkpoint loading, its PIL eval
    transform and ``open_clip.tokenize``."""
    model = open_clip.create_model(TINY_CLIP, pretrained=str(weights),
                                   force_quick_gelu=quick_gelu).eval()
    transform = open_clip.image_transform(32, is_train=False, mean=mean, std=std)
    pixels = torch.stack([transform(_pil(image)) for image in images])
    image_embeddings = model.encode_image(pixels, normalize=True)
    if captions is None:
        return image_embeddings
    return image_embeddings, model.encode_text(open_clip.tokenize(captions), normalize=True)


def test_clip_score_matches_open_clip_pipeline(tiny_clip_weights, val_samples):
    images = torch.stack([s['image'] for s in val_samples[:8]])
    captions = [s['caption'] for s in val_samples[:8]]
    image_embeddings, text_embeddings = _reference_embeddings(tiny_clip_weights, images,
                                                              captions)
    expected = 100 * (image_embeddings * text_embeddings).sum(-1)
    clip = OpenCLIP(TINY_CLIP, tiny_clip_weights)
    assert (clip.name, clip.dim, clip.weights_path) == \
        (f'openclip_{TINY_CLIP}', 32, str(tiny_clip_weights))
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())
    with torch.no_grad():
        scores = clip.clip_score(images, captions)
        embeddings = clip.embed_images(images)
    assert scores.shape == (8,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(8))
    with pytest.raises(ValueError, match='one caption per image'):
        clip.clip_score(images, captions[:3])


def test_clip_preprocess_matches_open_clip_transform_on_larger_images(tiny_clip_weights):
    # A smooth non-square uint8 image: resize the shorter side 40 -> 32, center crop 48 -> 38 -> 32.
    h, w = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing='ij')
    channels = [127.5 + 120 * torch.sin(w / 7 + c) * torch.cos(h / 9 - c) for c in range(3)]
    image = torch.stack(channels).round() / 127.5 - 1
    clip = OpenCLIP(TINY_CLIP, tiny_clip_weights)
    transform = open_clip.image_transform(32, is_train=False)
    expected = transform(_pil(image))
    got = clip.preprocess(image[None])[0]
    # PIL's and torch's antialiased bicubic agree to about a uint8 level; a crop one
    # pixel off would differ by several.
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    assert ((got - expected).abs() * std).max() < 2 / 255


def test_pretrained_tag_sets_activation_and_preprocessing(tiny_clip_weights, monkeypatch):
    images = torch.stack([ShapesT2I('val', 4, seed=0)[i]['image'] for i in range(4)])
    tag = dict(hf_hub='example/tiny-clip/', mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
               interpolation='bicubic', resize_mode='shortest', quick_gelu=True)
    monkeypatch.setattr(open_clip, 'get_pretrained_cfg',
                        lambda name, pretrained: tag if pretrained == 'tiny-tag' else {})
    clip = OpenCLIP(TINY_CLIP, tiny_clip_weights, pretrained_tag='tiny-tag')
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu,
                      open_clip.transformer.QuickGELU)
    expected = _reference_embeddings(tiny_clip_weights, images, quick_gelu=True,
                                     mean=tag['mean'], std=tag['std'])
    with torch.no_grad():
        torch.testing.assert_close(clip.embed_images(images), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown pretrained tag 'openai'"):
        OpenCLIP(TINY_CLIP, tiny_clip_weights, pretrained_tag='openai')


def test_open_clip_checkpoint_formats(tiny_clip_weights, tmp_path):
    clip = OpenCLIP(TINY_CLIP, tiny_clip_weights)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = clip.embed_images(images)
        # open_clip's training checkpoints: {'state_dict': ...} with DDP's 'module.' prefix.
        checkpoint = tmp_path / 'epoch_1.pt'
        torch.save({'epoch': 1, 'state_dict': {f'module.{k}': v
                                               for k, v in clip.model.state_dict().items()}},
                   checkpoint)
        torch.testing.assert_close(OpenCLIP(TINY_CLIP, checkpoint).embed_images(images),
                                   expected)
        # A TorchScript archive, the format of OpenAI's released CLIP files.
        scripted = tmp_path / 'scripted.pt'
        with pytest.warns(FutureWarning):  # torch deprecates jit.script but still loads it
            torch.jit.script(clip.model).save(str(scripted))
        torch.testing.assert_close(OpenCLIP(TINY_CLIP, scripted).embed_images(images), expected)
    state = clip.model.state_dict()
    del state['logit_scale']
    state['text_projection'] = state['text_projection'][:, :16]
    torch.save(state, tmp_path / 'other.bin')
    with pytest.raises(ValueError, match='1 missing keys.*1 of another shape'):
        OpenCLIP(TINY_CLIP, tmp_path / 'other.bin')


def test_clip_image_features_are_a_feature_extractor(tiny_clip_weights, val_samples):
    extractor = MODELS.build(dict(type='CLIPImageFeatures', model_name=TINY_CLIP,
                                  weights_path=str(tiny_clip_weights), pretrained_tag=None))
    images = torch.stack([s['image'] for s in val_samples[:4]])
    with torch.no_grad():
        features = extractor(images)
    assert (extractor.name, extractor.dim) == (f'clip_{TINY_CLIP}', 32)
    assert features.shape == (4, 32) and features.dtype == torch.float32
    torch.testing.assert_close(features, _reference_embeddings(tiny_clip_weights, images),
                               atol=1e-5, rtol=0)


def test_clip_score_and_cmmd_metrics(tiny_clip_weights, val_samples, tmp_path):
    images = torch.stack([s['image'] for s in val_samples])
    captions = [s['caption'] for s in val_samples]
    image_embeddings, text_embeddings = _reference_embeddings(tiny_clip_weights, images,
                                                              captions)
    clip_score = METRICS.build(dict(type='CLIPScore', model_name=TINY_CLIP,
                                    weights=str(tiny_clip_weights), pretrained_tag=None,
                                    device='cpu'))
    for start in range(0, 16, 6):
        clip_score.process(None, val_samples[start:start + 6])
    result = clip_score.evaluate(16)
    name = f'clip_score_{TINY_CLIP}'
    assert list(result) == [name, f'{name}_ci_low', f'{name}_ci_high']
    assert result[f'{name}_ci_low'] <= result[name] <= result[f'{name}_ci_high']
    expected = 100 * (image_embeddings * text_embeddings).sum(-1).mean().item()
    assert result[f'clip_score_{TINY_CLIP}'] == pytest.approx(expected, abs=1e-4)

    reference = dict(type='ShapesT2I', split='val', num_samples=16, seed=0)
    metrics = [METRICS.build(dict(type='CMMD', model_name=TINY_CLIP,
                                  weights=str(tiny_clip_weights), pretrained_tag=None,
                                  reference=reference, cache_dir=str(tmp_path), device='cpu'))
               for _ in range(2)]
    same, other = metrics
    train = ShapesT2I('train', 16, seed=0)
    other_samples = [train[i] for i in range(16)]
    same.process(None, val_samples)
    other.process(None, other_samples)
    name = f'cmmd_clip_{TINY_CLIP}'
    # The reference renders themselves: 0 (their embeddings are cached once).
    assert same.evaluate(16)[name] == pytest.approx(0, abs=1e-9)
    assert len(list((tmp_path / f'clip_{TINY_CLIP}').glob('*.npy'))) == 1
    other_embeddings = _reference_embeddings(
        tiny_clip_weights, torch.stack([s['image'] for s in other_samples]))
    expected = _direct_cmmd(other_embeddings.double().numpy(),
                            image_embeddings.double().numpy(), 10.0)
    value = other.evaluate(16)[name]
    assert value > 0 and value == pytest.approx(expected, rel=1e-3)


def test_missing_clip_weights_name_the_file_and_the_option(tmp_path):
    missing = tmp_path / 'missing.bin'
    with pytest.raises(FileNotFoundError, match='--clip-weights') as info:
        OpenCLIP('ViT-B-32', missing, option='--clip-weights')
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match='--clip-weights') as info:
        METRICS.build(dict(type='CLIPScore', weights=str(missing)))
    assert str(missing) in str(info.value)
    assert 'laion/CLIP-ViT-g-14-laion2B-s12B-b42K' in str(info.value)
    with pytest.raises(FileNotFoundError, match='--cmmd-weights') as info:
        METRICS.build(dict(type='CMMD', weights=str(missing)))
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match='no path given'):
        METRICS.build(dict(type='CMMD'))
