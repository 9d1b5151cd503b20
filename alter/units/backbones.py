"""Backbone adapters: what the engine needs to know about one family of diffusers denoisers.

Each family is one class registered in ``BACKBONES`` under the name of the
diffusers class it adapts; ``backbone_of(model)`` finds it (subclasses
included). Adding a family is adding one class. For its family, an adapter gives

* ``units(model, space)`` -- the prunable units in execution order (ALTER_SPEC §3, §6b);
* ``time_projection(model)`` -- the model's own sinusoidal timestep projection
  (the router's input, ALTER_SPEC §4);
* ``feature_modules(model)`` and ``feature_output(output)`` -- what feature KD matches;
* ``predict(model, sample, timesteps, context)`` -- one call in the latent layout
  ``(B, C, h, w)``, whatever the model's own input layout and argument names;
* ``example_context(model, context_length, generator)`` -- batch-1 conditioning
  for MAC counting and memory estimates;
* ``context_dim(model)`` -- width of the text states the model reads (None: none);
* ``timestep_divisor`` -- the model receives the training-scale timestep
  (0..1000) divided by it: 1, except Flux, which receives sigma = t / 1000;
* ``pipeline_attribute`` -- the attribute of a diffusers pipeline holding the
  model, which is also its sub-folder in a pipeline folder.

Conditioning (``context``) is a dict of batch-first tensors named as the model's
keyword arguments; a bare tensor is ``encoder_hidden_states`` (SD 1.x/2.x UNets).
"""
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
from diffusers import FluxPipeline, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import LabelEmbedding
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from alter.registry import BACKBONES
from alter.units.unit import Unit

Context = Union[torch.Tensor, Dict[str, torch.Tensor]]

# SDXL's micro-conditioning: original size, crop top-left, target size (ALTER_SPEC §6b).
SDXL_TIME_IDS = 6


def as_conditioning(context: Context) -> Dict[str, torch.Tensor]:
    """The conditioning as keyword arguments: a bare tensor is ``encoder_hidden_states``."""
    return context if isinstance(context, dict) else {'encoder_hidden_states': context}


def backbone_of(model: nn.Module, what: str = 'this operation') -> 'Backbone':
    """The adapter of ``model``'s family (looked up along its class hierarchy).

    Raises TypeError naming the supported diffusers classes for any other model.
    """
    names = BACKBONES.known_names()
    for cls in type(model).__mro__:
        if cls.__name__ in names:
            return BACKBONES.get(cls.__name__)()
    raise TypeError(f'{what} expects one of the diffusers models {", ".join(names)}, got '
                    f'{type(model).__name__}; another family needs its adapter registered in '
                    'alter.registry.BACKBONES')


def denoiser_folders() -> List[str]:
    """The sub-folders a diffusers pipeline folder keeps its denoiser in (``transformer``,
    ``unet``): the adapters' ``pipeline_attribute``s."""
    return sorted({BACKBONES.get(name).pipeline_attribute for name in BACKBONES.known_names()})


class Backbone:
    """Contract of a backbone adapter (see the module docstring)."""

    timestep_divisor: float = 1.0
    pipeline_attribute: str

    def units(self, model: nn.Module, space) -> Iterator[Unit]:
        raise NotImplementedError

    def time_projection(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def feature_modules(self, model: nn.Module) -> List[nn.Module]:
        raise NotImplementedError

    def feature_output(self, output) -> torch.Tensor:
        """The hidden state of a feature module's output (drops skip tensors, text streams)."""
        return output[0] if isinstance(output, tuple) else output

    def predict(self, model: nn.Module, sample: torch.Tensor, timesteps: torch.Tensor,
                context: Context) -> torch.Tensor:
        raise NotImplementedError

    def example_context(self, model: nn.Module, context_length: int,
                        generator: torch.Generator) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def context_dim(self, model: nn.Module) -> Optional[int]:
        raise NotImplementedError

    def latent_channels(self, model: nn.Module) -> int:
        """Channels of the latents ``predict`` takes."""
        return model.config.in_channels

    def shard_modules(self, model: nn.Module) -> List[nn.Module]:
        """The modules FSDP2 shards one by one, innermost first (the model itself aside)."""
        raise NotImplementedError

    def prepare_training(self, model: nn.Module) -> None:
        """Adjust a model about to be trained; nothing by default."""


# -- UNets -----------------------------------------------------------------------


def _resnet_bypass(resnet: ResnetBlock2D, hidden_channels: int,
                   allow_shortcut: bool) -> Optional[Tuple[str, Optional[int]]]:
    """Bypass of a resnet whose non-skip input has ``hidden_channels`` channels.

    Returns None when the resnet cannot be bypassed in this space.
    """
    if resnet.upsample is not None or resnet.downsample is not None:
        return ('shortcut', None) if allow_shortcut and resnet.conv_shortcut is not None else None
    if hidden_channels == resnet.out_channels:
        if resnet.in_channels == resnet.out_channels:
            return 'identity', None
        return 'slice', hidden_channels
    if allow_shortcut and resnet.conv_shortcut is not None:
        return 'shortcut', None
    return None


@BACKBONES.register_module('UNet2DConditionModel')
class UNetBackbone(Backbone):
    """Text-conditioned UNets: SD 1.x, SD 2.x and SDXL (``addition_embed_type='text_time'``:
    pooled text embeds and ``add_time_ids`` as ``text_embeds`` / ``time_ids``).

    Units (the space chooses the granularity, ALTER_SPEC §3), in execution order::

        down.0 .. down.{n-1}   (per block: res.0, attn.0, res.1, attn.1, ...)
        mid                    (res.0, attn.0, res.1)
        up.0 .. up.{m-1}       (per block: res.0, attn.0, res.1, attn.1, ...)

    Feature KD matches the outputs of the down blocks, the mid block and the up blocks.
    """

    pipeline_attribute = 'unet'

    def units(self, model: UNet2DConditionModel, space) -> Iterator[Unit]:
        # Width of the hidden state entering each up block: the previous
        # block's output (samplers keep the channel count).
        hidden = None
        for level, blocks in (('down', model.down_blocks), ('mid', [model.mid_block]),
                              ('up', model.up_blocks)):
            for b, block in enumerate(blocks):
                if block is None:
                    continue
                prefix = 'mid' if level == 'mid' else f'{level}.{b}'
                path = 'mid_block' if level == 'mid' else f'{level}_blocks.{b}'
                resnets = list(getattr(block, 'resnets', []))
                attentions = list(getattr(block, 'attentions', None) or [])
                for i in range(max(len(resnets), len(attentions))):
                    if i < len(resnets):
                        resnet = resnets[i]
                        # Down/mid resnets see only the hidden state; up
                        # resnets see cat([hidden, skip]).
                        width = resnet.in_channels if level != 'up' else hidden
                        bypass = _resnet_bypass(resnet, width, space.allow_shortcut)
                        if bypass is not None:
                            yield Unit(f'{prefix}.res.{i}', f'{path}.resnets.{i}', 'res',
                                       bypass[0], resnet, bypass[1])
                        hidden = resnet.out_channels
                    if i < len(attentions):
                        yield from self._attention_units(attentions[i], f'{prefix}.attn.{i}',
                                                         f'{path}.attentions.{i}', space)

    def _attention_units(self, attn: nn.Module, name: str, path: str, space) -> Iterator[Unit]:
        if not isinstance(attn, Transformer2DModel):
            return
        if space.whole_transformer:
            yield Unit(name, path, 'attn', 'identity', attn)
            return
        blocks = [m for m in attn.transformer_blocks if isinstance(m, BasicTransformerBlock)]
        for k, block in enumerate(blocks):
            suffix = f'.{k}' if len(blocks) > 1 else ''
            yield Unit(name + suffix, f'{path}.transformer_blocks.{k}', 'attn', 'identity', block)

    def time_projection(self, model: UNet2DConditionModel) -> nn.Module:
        return model.time_proj

    def shard_modules(self, model: UNet2DConditionModel) -> List[nn.Module]:
        # Layer granularity keeps the gathered weights small: SD2.1's largest layer
        # has 49 M parameters, its largest block 260 M.
        layers = [m for m in model.modules() if isinstance(m, (ResnetBlock2D, Transformer2DModel))]
        return layers + [b for b in self.feature_modules(model) if b is not None]

    def feature_modules(self, model: UNet2DConditionModel) -> List[nn.Module]:
        return [*model.down_blocks, model.mid_block, *model.up_blocks]

    def predict(self, model, sample, timesteps, context):
        context = as_conditioning(context)
        added = {k: context[k] for k in ('text_embeds', 'time_ids') if k in context}
        return model(sample, timesteps, context['encoder_hidden_states'],
                     added_cond_kwargs=added or None).sample

    def example_context(self, model, context_length, generator):
        config = model.config
        context = dict(encoder_hidden_states=torch.randn(
            1, context_length, config.cross_attention_dim, generator=generator))
        if config.addition_embed_type == 'text_time':
            # The UNet projects cat(text_embeds, embedded time ids); only their total
            # width is fixed, so the split is the base model's (the refiner's also fits).
            width = config.projection_class_embeddings_input_dim
            text = width - SDXL_TIME_IDS * config.addition_time_embed_dim
            context.update(text_embeds=torch.randn(1, text, generator=generator),
                           time_ids=torch.tensor([[512.0, 512.0, 0.0, 0.0, 512.0, 512.0]]))
        elif config.addition_embed_type is not None:
            raise NotImplementedError(
                'UNets conditioned on text context (SD 1.x/2.x) or on text and time ids '
                f"(SDXL, addition_embed_type='text_time') are supported; this one needs "
                f'addition_embed_type={config.addition_embed_type!r}')
        return context

    def context_dim(self, model) -> int:
        return model.config.cross_attention_dim


# -- transformers ----------------------------------------------------------------


class TransformerBackbone(Backbone):
    """Families whose units are whole transformer blocks (ALTER_SPEC §6b): the patch
    embedding, timestep/label/text embedders and the final layer are never pruned.

    ``block_lists`` names the model attributes holding blocks, in execution order,
    with the unit-name prefix and kind of their blocks; units are named
    ``<prefix>.<index>``. Feature KD matches the image stream after the middle block.
    """

    pipeline_attribute = 'transformer'
    # (unit-name prefix, attribute of the model holding the blocks, unit kind)
    block_lists: Tuple[Tuple[str, str, str], ...] = (('block', 'transformer_blocks', 'attn'), )

    def units(self, model: nn.Module, space) -> Iterator[Unit]:
        if space.whole_transformer or space.allow_shortcut:
            raise ValueError(f'the {space.name!r} pruning space sets a UNet granularity; a '
                             f'{type(model).__name__} has one unit per transformer block: use '
                             "space=dict(type='paper')")
        for prefix, attribute, kind in self.block_lists:
            for i, block in enumerate(getattr(model, attribute)):
                yield Unit(f'{prefix}.{i}', f'{attribute}.{i}', kind, self.bypass(block), block)

    def bypass(self, block: nn.Module) -> str:
        return 'identity'

    def blocks(self, model: nn.Module) -> List[nn.Module]:
        return [block for _, attribute, _ in self.block_lists for block in getattr(model, attribute)]

    def feature_modules(self, model: nn.Module) -> List[nn.Module]:
        blocks = self.blocks(model)
        return [blocks[len(blocks) // 2]]

    def shard_modules(self, model: nn.Module) -> List[nn.Module]:
        return self.blocks(model)

    def feature_output(self, output) -> torch.Tensor:
        return output[1] if isinstance(output, tuple) else output  # joint blocks: (text, image)


@BACKBONES.register_module('DiTTransformer2DModel')
class DiTBackbone(TransformerBackbone):
    """Class-conditional DiT (28 blocks on XL/2); context ``class_labels`` (B,) int64, where
    id ``num_embeds_ada_norm`` (the number of classes) is the null class of guidance."""

    def time_projection(self, model) -> nn.Module:
        # Every block holds its own (identical, weight-free) projection; the final
        # layer uses block 0's embedder.
        return model.transformer_blocks[0].norm1.emb.time_proj

    def predict(self, model, sample, timesteps, context):
        return model(sample, timestep=timesteps, class_labels=context['class_labels']).sample

    def example_context(self, model, context_length, generator):
        return dict(class_labels=torch.zeros(1, dtype=torch.long))

    def context_dim(self, model) -> None:
        return None

    def prepare_training(self, model) -> None:
        # diffusers' LabelEmbedding drops labels by itself in train mode, from the global
        # random stream; labels are dropped by the model's seeded draws instead
        # (``cond_dropout``), so the student and the teacher see the same labels.
        for module in model.modules():
            if isinstance(module, LabelEmbedding):
                module.dropout_prob = 0.0


@BACKBONES.register_module('PixArtTransformer2DModel')
class PixArtBackbone(TransformerBackbone):
    """PixArt-alpha: context ``encoder_hidden_states`` (B, L, caption_channels) -- T5's
    4096-d states with their ``encoder_attention_mask`` (B, L) -- or, for a text encoder
    without a mask (the embedded benchmark's MiniLM states), a bare (B, L, D) tensor:
    every token is attended, as a UNet attends its context."""

    # PixArt's autoencoder downsamples by 8: the 1024 px model's resolution condition.
    VAE_SCALE = 8

    def time_projection(self, model) -> nn.Module:
        return model.adaln_single.emb.time_proj

    def predict(self, model, sample, timesteps, context):
        added = dict(resolution=None, aspect_ratio=None)
        if model.use_additional_conditions:  # the 1024 px model
            h, w = (self.VAE_SCALE * n for n in sample.shape[-2:])
            batch = sample.shape[0]
            added = dict(resolution=sample.new_tensor([[h, w]]).expand(batch, -1),
                         aspect_ratio=sample.new_tensor([[h / w]]).expand(batch, -1))
        context = as_conditioning(context)
        return model(sample, encoder_hidden_states=context['encoder_hidden_states'],
                     encoder_attention_mask=context.get('encoder_attention_mask'),
                     timestep=timesteps, added_cond_kwargs=added).sample

    def example_context(self, model, context_length, generator):
        return dict(encoder_hidden_states=torch.randn(1, context_length,
                                                      model.config.caption_channels,
                                                      generator=generator),
                    encoder_attention_mask=torch.ones(1, context_length))

    def context_dim(self, model) -> int:
        return model.config.caption_channels


class JointBackbone(TransformerBackbone):
    """Blocks carrying a text and an image stream: skipped, both pass unchanged; a
    block that ends the text stream (``context_pre_only``) returns none."""

    def bypass(self, block: nn.Module) -> str:
        return 'joint_last' if getattr(block, 'context_pre_only', False) else 'joint'

    def time_projection(self, model) -> nn.Module:
        return model.time_text_embed.time_proj

    def example_context(self, model, context_length, generator):
        config = model.config
        return dict(encoder_hidden_states=torch.randn(1, context_length, config.joint_attention_dim,
                                                      generator=generator),
                    pooled_projections=torch.randn(1, config.pooled_projection_dim,
                                                   generator=generator))

    def context_dim(self, model) -> int:
        return model.config.joint_attention_dim


@BACKBONES.register_module('SD3Transformer2DModel')
class SD3Backbone(JointBackbone):
    """SD3 / SD3.5 MMDiT: joint blocks (the last one ``context_pre_only``); context
    ``encoder_hidden_states`` (B, L, 4096) and ``pooled_projections`` (B, 2048)."""

    block_lists = (('joint', 'transformer_blocks', 'joint'), )

    def predict(self, model, sample, timesteps, context):
        return model(hidden_states=sample, timestep=timesteps,
                     encoder_hidden_states=context['encoder_hidden_states'],
                     pooled_projections=context['pooled_projections']).sample


@BACKBONES.register_module('FluxTransformer2DModel')
class FluxBackbone(JointBackbone):
    """Flux: double-stream then single-stream blocks; the model takes 2x2-packed latents
    (B, h/2 * w/2, 4C) and sigma = t / 1000; context ``encoder_hidden_states``
    (B, L, 4096), ``pooled_projections`` (B, 768) and, for guidance-distilled
    models (``guidance_embeds``), ``guidance`` (B,)."""

    block_lists = (('double', 'transformer_blocks', 'joint'),
                   ('single', 'single_transformer_blocks', 'single'))
    timestep_divisor = 1000.0
    # The guidance scale of an example call (FluxPipeline's default).
    EXAMPLE_GUIDANCE = 3.5

    def latent_channels(self, model) -> int:
        return model.config.in_channels // 4

    def predict(self, model, sample, timesteps, context):
        batch, channels, h, w = sample.shape
        packed = FluxPipeline._pack_latents(sample, batch, channels, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, sample.device,
                                                         sample.dtype)
        text = context['encoder_hidden_states']
        txt_ids = torch.zeros(text.shape[1], 3, device=sample.device, dtype=sample.dtype)
        out = model(hidden_states=packed, timestep=timesteps / self.timestep_divisor,
                    guidance=context.get('guidance'), encoder_hidden_states=text,
                    pooled_projections=context['pooled_projections'], txt_ids=txt_ids,
                    img_ids=img_ids).sample
        return FluxPipeline._unpack_latents(out, h, w, 1)

    def example_context(self, model, context_length, generator):
        context = super().example_context(model, context_length, generator)
        if model.config.guidance_embeds:
            context['guidance'] = torch.full((1, ), self.EXAMPLE_GUIDANCE)
        return context
