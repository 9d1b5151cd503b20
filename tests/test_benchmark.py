"""alter/evaluation/benchmark.py, what the demo and the study score with: the prompts and
seeds every method shares, the evaluator run in batches and reused across methods against
direct computations of each metric, and the prompts x methods grid."""
import numpy as np
import pytest
import torch
from PIL import Image

from alter.datasets.shapes import ShapesT2I
from alter.evaluation.alignment import SentenceEmbedder, load_alignment_scorer
from alter.evaluation.attributes import load_attribute_classifier, score
from alter.evaluation.benchmark import (BenchmarkEvaluator, benchmark_prompts, default_metrics,
                                        grid_figure)
from alter.evaluation.distances import FeatureStats, FrechetReference, kernel_inception_distance
from alter.evaluation.features import EfficientNetLite0Features
from alter.evaluation.fidelity import psnr, ssim
from alter.evaluation.metrics import DEFAULT_REFERENCE


def test_prompts_are_val_items_with_one_seed_each():
    samples, captions, seeds = benchmark_prompts(5, seed=2)
    val = ShapesT2I('val', num_samples=5, seed=2)
    assert captions == [val[i]['caption'] for i in range(5)]
    assert all(torch.equal(s['image'], val[i]['image']) for i, s in enumerate(samples))
    assert seeds == [200_000 + i for i in range(5)]
    assert benchmark_prompts(5, seed=3)[1] != captions  # another seed, other prompts


def test_default_metrics_keep_the_full_reference_unless_asked():
    default = default_metrics(300)
    assert [m['type'] for m in default] == ['ProxyFID', 'ProxyKID', 'AttributeAccuracy',
                                           'AlignmentScore']
    assert default[0]['reference'] == DEFAULT_REFERENCE and DEFAULT_REFERENCE['num_samples'] == 2000
    assert default[1]['subset_size'] == 100
    small = default_metrics(10, num_reference=6)
    assert small[0]['reference'] == dict(DEFAULT_REFERENCE, num_samples=6)
    assert small[1]['subset_size'] == 6  # KID subsets fit the smaller set


def test_evaluator_in_batches_matches_direct_computations():
    """10 images scored 4 at a time, as the demo scores a method: every number equals the
    metric computed directly on all 10 at once, and a second method's call starts afresh."""
    samples, captions, _ = benchmark_prompts(10)
    g = torch.Generator().manual_seed(0)
    real = torch.stack([s['image'] for s in samples])
    generated = (real + 0.3 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    evaluator = BenchmarkEvaluator(default_metrics(10, num_reference=16) + [
        dict(type='PairedFidelity', reference_key='dense_image', name='dense')], batch_size=4)
    results = evaluator(generated, samples, {'dense_image': real})
    per_image = evaluator.per_image()
    assert evaluator(real, samples, {'dense_image': real})['paired_dense/ssim'] == 1.0
    assert evaluator(generated, samples, {'dense_image': real}) == results  # nothing carried

    attributes = [s['attributes'] for s in samples]
    with torch.no_grad():
        direct = score(load_attribute_classifier().predict(generated), attributes)
        extractor = EfficientNetLite0Features()
        features = extractor(generated).numpy()
        reference = extractor(torch.stack([ShapesT2I('val', num_samples=16, seed=0)[i]['image']
                                           for i in range(16)])).numpy()
        alignment = load_alignment_scorer()(extractor(generated), SentenceEmbedder()(captions))
    everything = np.array([float(r['all']) for r in direct])
    assert np.array_equal(per_image['attribute_accuracy'], everything)
    assert results['attribute_accuracy'] == pytest.approx(everything.mean())
    np.testing.assert_allclose(per_image['alignment_lit_minilm_effnet'], alignment.numpy(),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(per_image['paired_dense/psnr'], psnr(generated, real).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(per_image['paired_dense/ssim'], ssim(generated, real).numpy(),
                               rtol=1e-6)
    stats = FeatureStats.of(reference)
    fid = FrechetReference(stats.mean, stats.cov).feature_distance(features)
    assert results['fid_efficientnet_lite0'] == pytest.approx(fid, rel=1e-3)
    assert results['fid_efficientnet_lite0_ci_low'] <= results['fid_efficientnet_lite0'] \
        <= results['fid_efficientnet_lite0_ci_high']
    kid, kid_std = kernel_inception_distance(features, reference, 100, 10,
                                             np.random.default_rng(0))
    assert results['kid_efficientnet_lite0'] == pytest.approx(kid, rel=1e-3, abs=1e-6)
    assert results['kid_efficientnet_lite0_std'] == pytest.approx(kid_std, rel=1e-3, abs=1e-6)
    # Real renders, against their own kind, score better than the noisy ones.
    assert evaluator(real, samples, {'dense_image': real})['fid_efficientnet_lite0'] < fid


def test_evaluator_refuses_counts_that_do_not_match():
    samples, _, _ = benchmark_prompts(3)
    images = torch.stack([s['image'] for s in samples])
    evaluator = BenchmarkEvaluator([dict(type='PairedFidelity', reference_key='dense_image')])
    with pytest.raises(ValueError, match='3 images for 2 prompts'):
        evaluator(images, samples[:2])
    with pytest.raises(ValueError, match=r'references of \[2\]: one of each per prompt'):
        evaluator(images, samples, {'dense_image': images[:2]})


def test_grid_has_a_row_per_prompt_and_a_column_per_method(tmp_path):
    samples, captions, _ = benchmark_prompts(3)
    real = torch.stack([s['image'] for s in samples])
    path = grid_figure(real, {'a': -real, 'b': real}, captions, tmp_path / 'grid.png')
    assert path == tmp_path / 'grid.png' and sorted(tmp_path.iterdir()) == [path]  # no temp left
    with Image.open(path) as grid:  # figsize (1.6 x 3 columns + 3.2, 1.6 x 3 rows) at 110 dpi
        assert grid.format == 'PNG' and grid.size == (880, 528)
