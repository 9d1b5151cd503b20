"""open_clip models from local weight files: CLIP score and CLIP image features (CMMD).

``OpenCLIP`` builds an open_clip architecture from the config shipped in the package
and loads its weights only from a local file (nothing is downloaded here). The
pretrained tag, when given, is more than a label: it fixes the activation
(OpenAI's checkpoints need QuickGELU; a plain ``ViT-L-14-336`` built without it gives
wrong embeddings from the ``openai`` weights) and the image preprocessing.

* CLIP score (spec §8): open_clip ViT-g-14, ``laion2b_s12b_b42k``, ``100 * cos``.
* CMMD features (Jayasumana et al. 2024): CLIP ViT-L/14 at 336 px (``openai``),
  L2-normalised image embeddings, via ``CLIPImageFeatures``.
"""
import logging
import os
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from open_clip.factory import load_state_dict
from torch import nn
from torchvision.transforms import InterpolationMode

from alter.evaluation.features import FeatureExtractor, check_images
from alter.registry import MODELS

PathLike = Union[str, os.PathLike]

# Keys of OpenAI's TorchScript checkpoints that are model hyper-parameters, not weights.
_OPENAI_HYPERPARAMETER_KEYS = ('input_resolution', 'context_length', 'vocab_size')


class _DropRandomInitWarning(logging.Filter):
    """Hides open_clip's "initialized randomly" warning: weights are loaded right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'initialized randomly' not in record.getMessage()


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI's original CLIP ``.pt`` files)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('/constants.pkl') for name in archive.namelist())


def _read_state_dict(path: Path) -> dict:
    """State dict of a ``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth`` file: a plain
    state dict, an open_clip checkpoint (``{'state_dict': ...}``, ``module.`` prefixes
    stripped) or OpenAI's TorchScript archive."""
    if _is_torchscript(path):
        # torch.load(weights_only=True) refuses TorchScript archives; torch.jit.load reads
        # them without Python's unpickler.
        state = torch.jit.load(str(path), map_location='cpu').state_dict()
        return {k: v for k, v in state.items() if k not in _OPENAI_HYPERPARAMETER_KEYS}
    return load_state_dict(str(path), device='cpu', weights_only=True)


class OpenCLIP(nn.Module):
    """A frozen open_clip model with weights from a local file.

    Args:
        model_name: open_clip architecture (a config shipped with open_clip or added
            with ``open_clip.add_model_config``), e.g. ``'ViT-g-14'``.
        weights_path: local weights of that architecture: an open_clip checkpoint
            (``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` of the tag's
            Hugging Face repository), a plain state dict, or OpenAI's TorchScript ``.pt``.
        pretrained_tag: open_clip tag the weights were released under, e.g.
            ``'laion2b_s12b_b42k'``; sets QuickGELU and the preprocessing as open_clip
            does for it. None: the architecture's defaults (GELU, OpenAI mean/std,
            bicubic, shortest-side resize).
        option: how callers pass ``weights_path``, named when the file is missing.

    Attributes ``name`` (``openclip_<model_name>``), ``model_name``, ``pretrained_tag``
    and ``weights_path`` identify the scorer in manifests; ``dim`` is the embedding size.
    """

    def __init__(self, model_name: str, weights_path: Optional[PathLike],
                 pretrained_tag: Optional[str] = None,
                 option: str = 'weights_path=... (OpenCLIP) or weights=... (metric configs)'
                 ) -> None:
        super().__init__()
        path = Path(weights_path).expanduser() if weights_path else None
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained_tag) if pretrained_tag \
            else {}
        if path is None or not path.is_file():
            source = f' (e.g. from huggingface.co/{tag_cfg["hf_hub"].rstrip("/")})' \
                if tag_cfg.get('hf_hub') else ''
            raise FileNotFoundError(
                f'open_clip {model_name} ({pretrained_tag or "no tag"}) weights not found: '
                f'{str(path) if path else "no path given"}. Nothing is downloaded here: pass a '
                f'local checkpoint{source} with {option}')
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise ValueError(f'unknown open_clip model {model_name!r}: use a name from '
                             'open_clip.list_models() or register a config with '
                             'open_clip.add_model_config')
        if pretrained_tag and not tag_cfg:
            raise ValueError(f'unknown pretrained tag {pretrained_tag!r} for open_clip '
                             f'{model_name}; known tags: '
                             f'{open_clip.list_pretrained_tags_by_model(model_name)} (or None)')
        self.model_name, self.pretrained_tag, self.weights_path = model_name, pretrained_tag, \
            str(path)
        self.name = f'openclip_{model_name}'
        self.dim = model_cfg['embed_dim']

        root_logger = logging.getLogger()
        drop_warning = _DropRandomInitWarning()
        root_logger.addFilter(drop_warning)
        try:
            self.model = open_clip.create_model(
                model_name, pretrained=None, force_quick_gelu=tag_cfg.get('quick_gelu', False),
                force_preprocess_cfg=tag_cfg)
        finally:
            root_logger.removeFilter(drop_warning)
        self._load(path)

        preprocess = self.model.visual.preprocess_cfg
        size = preprocess['size']
        height, width = (size, size) if isinstance(size, int) else size
        if height != width or preprocess['resize_mode'] not in ('shortest', 'squash'):
            raise ValueError(f'{model_name}: only square inputs with resize_mode shortest or '
                             f'squash are supported, got {preprocess}')
        self.image_size = height
        self.resize_mode = preprocess['resize_mode']
        self.interpolation = InterpolationMode(preprocess['interpolation'])
        self.register_buffer('mean', torch.tensor(preprocess['mean']).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(preprocess['std']).view(1, 3, 1, 1),
                             persistent=False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.eval().requires_grad_(False)

    def _load(self, path: Path) -> None:
        expected = self.model.state_dict()
        # Non-persistent buffers (e.g. the text attention mask) are rebuilt, not weights;
        # scripted models still save them.
        rebuilt = {name for name, _ in self.model.named_buffers()} - set(expected)
        state = {k: v for k, v in _read_state_dict(path).items() if k not in rebuilt}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mismatched = sorted(k for k in set(expected) & set(state)
                            if expected[k].shape != state[k].shape)
        if missing or unexpected or mismatched:
            raise ValueError(
                f'{path} is not a state dict of open_clip {self.model_name}: '
                f'{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected '
                f'(e.g. {unexpected[:3]}), {len(mismatched)} of another shape '
                f'(e.g. {mismatched[:3]})')
        self.model.load_state_dict(state)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) normalised network input, S = ``image_size``.

        open_clip's eval transform on tensors: resize (the tag's interpolation,
        antialiased) of the shorter side to S and center crop (``squash``: resize to
        S x S), then the tag's mean/std. It matches open_clip's PIL pipeline up to PIL's
        resize vs torch's and PIL's rounding to uint8; values are clamped to [0, 1]
        after resizing as PIL's are.
        """
        check_images(images)
        x = (images.float() + 1) / 2
        size = [self.image_size] if self.resize_mode == 'shortest' else [self.image_size] * 2
        x = TF.resize(x, size, interpolation=self.interpolation, antialias=True)
        x = TF.center_crop(x, [self.image_size, self.image_size]).clamp(0, 1)
        return (x - self.mean) / self.std

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> L2-normalised image embeddings float32 (B, ``dim``)."""
        return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)

    def embed_texts(self, captions: Sequence[str]) -> torch.Tensor:
        """B captions -> L2-normalised text embeddings float32 (B, ``dim``); the
        tokenizer truncates captions to the model's context length (77 tokens)."""
        if isinstance(captions, str):
            raise TypeError('expected a sequence of captions, got one str; wrap it in a list')
        tokens = self.tokenizer(list(captions)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def clip_score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """CLIP score (B,) of images (B, 3, H, W) in [-1, 1] and their B captions:
        ``100 * cos`` of the embeddings, not clamped at 0 (the ALTER reference code's
        convention; torchmetrics' ``CLIPScore`` clamps with ``max(100 cos, 0)``)."""
        if len(captions) != len(images):
            raise ValueError(f'expected one caption per image, got {len(captions)} captions '
                             f'for {len(images)} images')
        return 100 * (self.embed_images(images) * self.embed_texts(captions)).sum(dim=-1)


@MODELS.register_module()
class CLIPImageFeatures(FeatureExtractor):
    """``OpenCLIP.embed_images`` as a ``FeatureExtractor`` (``clip_<model_name>[_<tag>]``):
    the L2-normalised CLIP image embeddings CMMD compares. Args as ``OpenCLIP``; the
    defaults are CMMD's ViT-L/14 at 336 px with OpenAI's weights. The tag is part of the
    name, so cached reference features of two weight sets never mix."""

    def __init__(self, model_name: str = 'ViT-L-14-336', weights_path: Optional[PathLike] = None,
                 pretrained_tag: Optional[str] = 'openai',
                 option: str = "weights_path=... (dict(type='CLIPImageFeatures', ...))") -> None:
        super().__init__()
        self.clip = OpenCLIP(model_name, weights_path, pretrained_tag, option)
        self.name = f'clip_{model_name}' + (f'_{pretrained_tag}' if pretrained_tag else '')
        self.dim = self.clip.dim
        self._freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.embed_images(images)
