"""The embedded benchmark's evaluators as mmengine metrics (``METRICS``, scope ``alter``).

``process(data_batch, data_samples)`` takes ``data_samples`` as dicts with ``image``
(float (3, H, W) in [-1, 1]), ``caption`` (str) and ``attributes`` (Shapes-T2I labels);
each metric reads the keys it needs. Result names carry the feature space or model,
so proxy numbers are never mistaken for Inception FID or CLIP score:

========================  =================================================================
``ProxyFID``              ``fid_<extractor>``, e.g. ``fid_efficientnet_lite0``
``ProxyKID``              ``kid_<extractor>`` and ``kid_<extractor>_std``
``AttributeAccuracy``     ``attribute_accuracy`` (every asked attribute right) and
                          ``attribute_accuracy/<colour|shape|size|count|relation|background>``
``AlignmentScore``        ``alignment_lit_minilm_effnet`` (mean 100 * cos)
``CLIPScore``             ``clip_score_<model>``, e.g. ``clip_score_ViT-g-14`` (mean 100 * cos)
``CMMD``                  ``cmmd_clip_<model>_<tag>``, e.g. ``cmmd_clip_ViT-L-14-336_openai``
``PairedFidelity``        ``paired_<name>/<psnr|ssim|feature_distance>``: each image against
                          its reference image (same prompt and noise), e.g. the teacher's
========================  =================================================================

Every result comes with a bootstrap 95 % interval over images, ``<result>_ci_low`` and
``<result>_ci_high`` (``alter.evaluation.intervals``). Metrics that score each image
keep the scores after ``evaluate`` in ``per_image`` (name -> (N,) array, NaN where a
score does not apply), so paired differences between methods can be bootstrapped too.

With ``extractor=dict(type='InceptionFeatures', weights_path=...)`` ProxyFID/ProxyKID
compute FID/KID in pytorch-fid's Inception space (``fid_inception_v3_fid``).
CLIPScore and CMMD run open_clip models from local weight files (``weights``).
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from alter.evaluation.alignment import SentenceEmbedder, load_alignment_scorer
from alter.evaluation.attributes import ATTRIBUTES, load_attribute_classifier, score
from alter.evaluation.clip import CLIPImageFeatures, OpenCLIP
from alter.evaluation.distances import (FeatureStats, FrechetReference, cmmd,
                                        kernel_inception_distance, mmd2_unbiased)
from alter.evaluation.features import (EfficientNetLite0Features, FeatureExtractor, PathLike,
                                       build_extractor, cached_dataset_features, extract_features)
from alter.evaluation.fidelity import psnr, ssim
from alter.evaluation.intervals import statistic_interval, summary
from alter.registry import METRICS

DEFAULT_EXTRACTOR = dict(type='EfficientNetLite0Features')
# Real renders the generated images are compared with.
DEFAULT_REFERENCE = dict(type='ShapesT2I', split='val', num_samples=2000, seed=0)


def _field(data_samples: Sequence[dict], key: str) -> List[Any]:
    """``key`` of every sample; one clear error when a sample lacks it."""
    for i, sample in enumerate(data_samples):
        if not isinstance(sample, dict) or key not in sample:
            found = f'keys {sorted(sample)}' if isinstance(sample, dict) else type(sample).__name__
            raise KeyError(f'evaluation data_samples must be dicts with {key!r} (image, caption, '
                           f'attributes); sample {i} has {found}')
    return [sample[key] for sample in data_samples]


def _images(data_samples: Sequence[dict], device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) float images of the samples on ``device``."""
    return torch.stack([torch.as_tensor(i) for i in _field(data_samples, 'image')]).to(device)


class _BenchmarkMetric(BaseMetric):
    """Base of this module's metrics. ``device``: where their networks run (default CUDA
    when available). No default prefix: the result names already say what they are."""

    default_prefix = ''

    def __init__(self, device: Optional[str] = None, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))


class _PerImageMetric(_BenchmarkMetric):
    """A metric that scores every image: reports each score's mean with its bootstrap
    interval and keeps the scores in ``per_image``. Subclasses implement
    ``per_image_scores(results) -> {name: (N,) array}``."""

    def __init__(self, resamples: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.resamples = resamples
        self.per_image: Dict[str, np.ndarray] = {}

    def per_image_scores(self, results: list) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def compute_metrics(self, results: list) -> Dict[str, float]:
        self.per_image = self.per_image_scores(results)
        metrics = {}
        for name, values in self.per_image.items():
            stats = summary(values, self.resamples)
            metrics.update({name: stats['mean'], f'{name}_ci_low': stats['ci_low'],
                            f'{name}_ci_high': stats['ci_high']})
        return metrics


class _FeatureDistanceMetric(_BenchmarkMetric):
    """Features of generated images vs those of real reference renders (cached).

    Args:
        extractor: config of a ``FeatureExtractor`` (``MODELS``) or the extractor.
        reference: ``DATASETS`` config of the real images; their features are cached
            under ``cache_dir`` (default ``$ALTER_CACHE/features``).
        batch_size: images per extractor call.
        num_workers: DataLoader processes reading the reference images (0: this one).
        resamples: bootstrap draws of the generated images for the 95 % interval
            (the reference set is held fixed). A set statistic on a draw with repeated
            images reads as less diverse, so these intervals sit slightly high; the
            paired per-image metrics are the sharper instrument for comparisons.
    """

    def __init__(self, extractor: Union[dict, FeatureExtractor] = DEFAULT_EXTRACTOR,
                 reference: dict = DEFAULT_REFERENCE, cache_dir: Optional[PathLike] = None,
                 batch_size: int = 50, num_workers: int = 0, resamples: int = 100,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.extractor = build_extractor(extractor).to(self.device)
        self.reference = dict(reference)
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.resamples = resamples

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        images = _images(data_samples, self.device)
        self.results.extend(extract_features(self.extractor, images.split(self.batch_size)))

    def reference_features(self) -> np.ndarray:
        """(N, D) features of the reference renders."""
        return cached_dataset_features(self.extractor, self.reference, self.cache_dir,
                                       self.batch_size, self.num_workers)

    def with_interval(self, name: str, distance, generated: np.ndarray) -> Dict[str, float]:
        """``name``: ``distance(generated)`` and its bootstrap interval over the
        generated features (N, D) (none when ``resamples`` is 0)."""
        result = {name: distance(generated)}
        if self.resamples:
            low, high = statistic_interval(lambda idx: distance(generated[idx]), len(generated),
                                           self.resamples)
            result.update({f'{name}_ci_low': low, f'{name}_ci_high': high})
        return result


@METRICS.register_module()
class ProxyFID(_FeatureDistanceMetric):
    """Fréchet distance in the extractor's feature space (``fid_<extractor name>``).

    ``reference_stats``: a ``FeatureStats`` file (``mu``, ``sigma``, ``num``) to compare
    with instead of ``reference`` — e.g. statistics of a large real set whose features
    are not kept.
    """

    def __init__(self, reference_stats: Optional[PathLike] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reference_stats = reference_stats

    def compute_metrics(self, results: list) -> Dict[str, float]:
        reference = FeatureStats.load(self.reference_stats) if self.reference_stats else \
            FeatureStats.of(self.reference_features())
        frechet = FrechetReference(reference.mean, reference.cov)
        return self.with_interval(f'fid_{self.extractor.name}', frechet.feature_distance,
                                  np.stack(results))


@METRICS.register_module()
class ProxyKID(_FeatureDistanceMetric):
    """KID in the extractor's feature space (``kid_<name>``, ``kid_<name>_std``):
    ``subsets`` random subsets of ``subset_size`` (at most the number of generated
    images), drawn with ``np.random.default_rng(seed)``."""

    def __init__(self, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed

    def compute_metrics(self, results: list) -> Dict[str, float]:
        generated, reference = np.stack(results), self.reference_features()
        mean, std = kernel_inception_distance(generated, reference, self.subsets,
                                              self.subset_size, np.random.default_rng(self.seed))
        name = f'kid_{self.extractor.name}'
        result = {name: mean, f'{name}_std': std}
        if self.resamples:
            # One unbiased MMD^2 per draw, against a random reference subset of its size.
            rng = np.random.default_rng(self.seed)
            low, high = statistic_interval(lambda idx: mmd2_unbiased(
                generated[idx], reference[rng.choice(len(reference), len(idx), replace=False)]),
                len(generated), self.resamples, self.seed)
            result.update({f'{name}_ci_low': low, f'{name}_ci_high': high})
        return result


@METRICS.register_module()
class AttributeAccuracy(_PerImageMetric):
    """Fraction of images showing every attribute their caption asks for, and per
    attribute (``alter.evaluation.attributes``). ``weights``: the classifier file
    (default ``checkpoints/attribute_classifier.safetensors``)."""

    def __init__(self, weights: Optional[PathLike] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.classifier = load_attribute_classifier(weights).to(self.device)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        predictions = self.classifier.predict(_images(data_samples, self.device))
        self.results.extend(score(predictions, _field(data_samples, 'attributes')))

    def per_image_scores(self, results: list) -> Dict[str, np.ndarray]:
        """1.0 / 0.0 per image and attribute, NaN where the caption does not ask for it."""
        return {'attribute_accuracy' if key == 'all' else f'attribute_accuracy/{key}':
                np.array([np.nan if r[key] is None else float(r[key]) for r in results])
                for key in ('all', ) + ATTRIBUTES}


@METRICS.register_module()
class AlignmentScore(_PerImageMetric):
    """Mean LiT-style alignment score ``100 * cos`` of images and their captions
    (``alignment_lit_minilm_effnet``; ``alter.evaluation.alignment``). ``weights``:
    the scorer file (default ``checkpoints/alignment_scorer.safetensors``)."""

    def __init__(self, weights: Optional[PathLike] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scorer = load_alignment_scorer(weights).to(self.device)
        self.extractor = EfficientNetLite0Features().to(self.device)
        self.embedder = SentenceEmbedder().to(self.device)

    @torch.no_grad()
    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        image_features = self.extractor(_images(data_samples, self.device))
        text_features = self.embedder(_field(data_samples, 'caption'))
        self.results.extend(self.scorer(image_features, text_features).cpu().tolist())

    def per_image_scores(self, results: list) -> Dict[str, np.ndarray]:
        return {'alignment_lit_minilm_effnet': np.array(results, dtype=np.float64)}


@METRICS.register_module()
class CLIPScore(_PerImageMetric):
    """Mean CLIP score ``100 * cos`` of images and their captions, not clamped
    (``clip_score_<model_name>``; ``OpenCLIP.clip_score``). Spec §8: open_clip ViT-g-14
    with the ``laion2b_s12b_b42k`` weights.

    Args:
        weights: local open_clip checkpoint of ``model_name`` (``--clip-weights``).
        model_name, pretrained_tag: as ``OpenCLIP``.
    """

    def __init__(self, weights: Optional[PathLike] = None, model_name: str = 'ViT-g-14',
                 pretrained_tag: Optional[str] = 'laion2b_s12b_b42k', **kwargs) -> None:
        super().__init__(**kwargs)
        self.clip = OpenCLIP(model_name, weights, pretrained_tag,
                             option="--clip-weights (dict(type='CLIPScore', weights=...))")
        self.clip.to(self.device)

    @torch.no_grad()
    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        scores = self.clip.clip_score(_images(data_samples, self.device),
                                      _field(data_samples, 'caption'))
        self.results.extend(scores.cpu().tolist())

    def per_image_scores(self, results: list) -> Dict[str, np.ndarray]:
        return {f'clip_score_{self.clip.model_name}': np.array(results, dtype=np.float64)}


@METRICS.register_module()
class CMMD(_FeatureDistanceMetric):
    """CMMD of generated and reference images (``cmmd_clip_<model_name>_<tag>``;
    ``distances.cmmd``): RBF MMD^2 x ``scale`` of L2-normalised CLIP image embeddings,
    spec §8's ViT-L/14-336 (``openai``), sigma 10, x 1000. Reference embeddings are
    cached as ProxyFID's features.

    Args:
        weights: local open_clip checkpoint of ``model_name`` (``--cmmd-weights``).
        model_name, pretrained_tag: as ``OpenCLIP``.
        sigma, scale: the RBF kernel's bandwidth and the factor on MMD^2.
        reference, cache_dir, batch_size: as ``_FeatureDistanceMetric``.
    """

    def __init__(self, weights: Optional[PathLike] = None, model_name: str = 'ViT-L-14-336',
                 pretrained_tag: Optional[str] = 'openai', sigma: float = 10.0,
                 scale: float = 1000.0, **kwargs) -> None:
        extractor = CLIPImageFeatures(model_name, weights, pretrained_tag,
                                      option="--cmmd-weights (dict(type='CMMD', weights=...))")
        super().__init__(extractor=extractor, **kwargs)
        self.sigma, self.scale = sigma, scale

    def compute_metrics(self, results: list) -> Dict[str, float]:
        reference = self.reference_features()
        return self.with_interval(f'cmmd_{self.extractor.name}',
                                  lambda x: cmmd(x, reference, self.sigma, self.scale),
                                  np.stack(results))


@METRICS.register_module()
class PairedFidelity(_PerImageMetric):
    """Each image against its reference image from the same prompt and initial noise
    (the dense teacher's, at the same or another step count): per-image PSNR (dB), SSIM
    (``alter.evaluation.fidelity``) and the cosine distance ``1 - cos`` of their
    EfficientNet-Lite0 features (``paired_<name>/psnr``, ``/ssim``, ``/feature_distance``).

    Args:
        reference_key: the data-sample key holding the reference image (3, H, W) in
            [-1, 1].
        name: what the reference is, in the result names (e.g. ``teacher``).
    """

    def __init__(self, reference_key: str = 'reference', name: str = 'reference',
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.reference_key, self.name = reference_key, name
        self.extractor = EfficientNetLite0Features().to(self.device)

    @torch.no_grad()
    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        images = _images(data_samples, self.device)
        references = torch.stack([torch.as_tensor(r) for r in _field(
            data_samples, self.reference_key)]).to(self.device)
        cosine = torch.nn.functional.cosine_similarity(self.extractor(images),
                                                       self.extractor(references), dim=1)
        self.results.extend(zip(psnr(images, references).tolist(),
                                ssim(images, references).tolist(), (1 - cosine).tolist()))

    def per_image_scores(self, results: list) -> Dict[str, np.ndarray]:
        values = np.array(results, dtype=np.float64).reshape(-1, 3)
        return {f'paired_{self.name}/{key}': values[:, i]
                for i, key in enumerate(('psnr', 'ssim', 'feature_distance'))}
