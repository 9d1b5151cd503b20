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
========================  =================================================================

With ``extractor=dict(type='InceptionFeatures', weights_path=...)`` ProxyFID/ProxyKID
compute FID/KID in pytorch-fid's Inception space (``fid_inception_v3_fid``).
CLIPScore and CMMD run open_clip models from local weight files (``weights``).
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from alter.evaluation.alignment import SentenceEmbedder, load_alignment_scorer
from alter.evaluation.attributes import load_attribute_classifier, score, summarise
from alter.evaluation.clip import CLIPImageFeatures, OpenCLIP
from alter.evaluation.distances import (FeatureStats, cmmd, frechet_distance,
                                        kernel_inception_distance)
from alter.evaluation.features import (EfficientNetLite0Features, FeatureExtractor, PathLike,
                                       build_extractor, cached_dataset_features, extract_features)
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


class _FeatureDistanceMetric(_BenchmarkMetric):
    """Features of generated images vs those of real reference renders (cached).

    Args:
        extractor: config of a ``FeatureExtractor`` (``MODELS``) or the extractor.
        reference: ``DATASETS`` config of the real images; their features are cached
            under ``cache_dir`` (default ``$ALTER_CACHE/features``).
        batch_size: images per extractor call.
    """

    def __init__(self, extractor: Union[dict, FeatureExtractor] = DEFAULT_EXTRACTOR,
                 reference: dict = DEFAULT_REFERENCE, cache_dir: Optional[PathLike] = None,
                 batch_size: int = 50, **kwargs) -> None:
        super().__init__(**kwargs)
        self.extractor = build_extractor(extractor).to(self.device)
        self.reference = dict(reference)
        self.cache_dir = cache_dir
        self.batch_size = batch_size

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        images = _images(data_samples, self.device)
        self.results.extend(extract_features(self.extractor, images.split(self.batch_size)))

    def reference_features(self) -> np.ndarray:
        """(N, D) features of the reference renders."""
        return cached_dataset_features(self.extractor, self.reference, self.cache_dir,
                                       self.batch_size)


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
        generated = FeatureStats.of(np.stack(results))
        reference = FeatureStats.load(self.reference_stats) if self.reference_stats else \
            FeatureStats.of(self.reference_features())
        return {f'fid_{self.extractor.name}': frechet_distance(
            generated.mean, generated.cov, reference.mean, reference.cov)}


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
        mean, std = kernel_inception_distance(np.stack(results), self.reference_features(),
                                              self.subsets, self.subset_size,
                                              np.random.default_rng(self.seed))
        name = f'kid_{self.extractor.name}'
        return {name: mean, f'{name}_std': std}


@METRICS.register_module()
class AttributeAccuracy(_BenchmarkMetric):
    """Fraction of images showing every attribute their caption asks for, and per
    attribute (``alter.evaluation.attributes``). ``weights``: the classifier file
    (default ``checkpoints/attribute_classifier.safetensors``)."""

    def __init__(self, weights: Optional[PathLike] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.classifier = load_attribute_classifier(weights).to(self.device)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        predictions = self.classifier.predict(_images(data_samples, self.device))
        self.results.extend(score(predictions, _field(data_samples, 'attributes')))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        summary = summarise(results)
        return {'attribute_accuracy' if key == 'all' else f'attribute_accuracy/{key}': value
                for key, value in summary.items()}


@METRICS.register_module()
class AlignmentScore(_BenchmarkMetric):
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

    def compute_metrics(self, results: list) -> Dict[str, float]:
        return {'alignment_lit_minilm_effnet': float(np.mean(results))}


@METRICS.register_module()
class CLIPScore(_BenchmarkMetric):
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

    def compute_metrics(self, results: list) -> Dict[str, float]:
        return {f'clip_score_{self.clip.model_name}': float(np.mean(results))}


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
        return {f'cmmd_{self.extractor.name}': cmmd(np.stack(results), self.reference_features(),
                                                    self.sigma, self.scale)}
