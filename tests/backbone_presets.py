"""Tiny presets of every supported backbone family: real diffusers classes, toy widths.

Sizes follow diffusers' own tests (DiT with 2 layers of 2 x 8-d heads, ...). Each
preset is the model part of a ``LatentDiffusion`` / ``ALTER`` config: the denoiser,
its objective and noise schedule, and tiny random conditioning encoders.
"""
import copy

import torch

from alter.registry import MODELS
from alter.units.backbones import backbone_of

TINY_CLIP = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                 num_hidden_layers=2, projection_dim=32)
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=384)
DDPM = dict(num_train_timesteps=1000, beta_schedule='linear', prediction_type='epsilon')
FLOW = dict(num_train_timesteps=1000, shift=3.0)


def _transformer(model_class: str, **arch) -> dict:
    return dict(type='DiffusersTransformer', model_class=model_class, arch=arch)


PRESETS = {
    # SDXL's UNet topology: text_time embedding, a 2-deep transformer level.
    'sdxl': dict(
        unet=dict(type='DiffusersUNet', arch=dict(
            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
            cross_attention_dim=64, down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
            up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'), attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2), addition_embed_type='text_time',
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
            use_linear_projection=True, sample_size=8, in_channels=4, out_channels=4)),
        noise_scheduler=DDPM, context_length=77,
        text_encoder=dict(type='SDXLTextEncoders', resolution=64, load_weights=False,
                          arch=dict(text_encoder=TINY_CLIP, text_encoder_2=TINY_CLIP))),
    'dit': dict(
        unet=_transformer('DiTTransformer2DModel', sample_size=8, num_layers=2, patch_size=2,
                          attention_head_dim=8, num_attention_heads=2, in_channels=4,
                          out_channels=8, norm_num_groups=4, num_embeds_ada_norm=1000),
        objective=dict(type='LearnedSigmaObjective'), noise_scheduler=DDPM,
        text_encoder=dict(type='ClassLabels', num_classes=1000)),
    'pixart': dict(
        unet=_transformer('PixArtTransformer2DModel', sample_size=8, num_layers=2, patch_size=2,
                          attention_head_dim=8, num_attention_heads=2, caption_channels=32,
                          in_channels=4, cross_attention_dim=16, out_channels=8,
                          norm_type='ada_norm_single', norm_elementwise_affine=False,
                          norm_eps=1e-6),
        objective=dict(type='LearnedSigmaObjective'), noise_scheduler=DDPM, context_length=120,
        text_encoder=dict(type='PixArtTextEncoder', load_weights=False,
                          arch=dict(text_encoder=TINY_T5))),
    # Three joint blocks: the last one ends the text stream (context_pre_only).
    'sd3': dict(
        unet=_transformer('SD3Transformer2DModel', sample_size=8, patch_size=2, in_channels=4,
                          num_layers=3, attention_head_dim=8, num_attention_heads=2,
                          caption_projection_dim=16, joint_attention_dim=32,
                          pooled_projection_dim=64, out_channels=4, pos_embed_max_size=8),
        objective=dict(type='FlowMatchingObjective'), noise_scheduler=FLOW, context_length=93,
        text_encoder=dict(type='SD3TextEncoders', t5_length=16, load_weights=False,
                          arch=dict(text_encoder=TINY_CLIP, text_encoder_2=TINY_CLIP,
                                    text_encoder_3=TINY_T5))),
    'flux': dict(
        unet=_transformer('FluxTransformer2DModel', patch_size=1, in_channels=16, num_layers=2,
                          num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
                          joint_attention_dim=32, pooled_projection_dim=32,
                          axes_dims_rope=(2, 2, 4), guidance_embeds=True),
        objective=dict(type='FlowMatchingObjective'),
        noise_scheduler=dict(FLOW, use_dynamic_shifting=True), context_length=16,
        text_encoder=dict(type='FluxTextEncoders', t5_length=16, guidance=3.5,
                          load_weights=False, arch=dict(text_encoder=TINY_CLIP,
                                                        text_encoder_2=TINY_T5))),
}
FAMILIES = sorted(PRESETS)
TRANSFORMERS = [f for f in FAMILIES if f != 'sdxl']


def preset(family: str) -> dict:
    return copy.deepcopy(PRESETS[family])


def build_denoiser(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return MODELS.build(preset(family)['unet']).eval()


def example_inputs(model, batch: int = 3, size: int = 8, context_length: int = 6):
    """(latents (B, C, size, size), timesteps (B,) on the training scale, context) for ``model``."""
    backbone = backbone_of(model)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, backbone.latent_channels(model), size, size, generator=g)
    context = {k: v.repeat(batch, *[1] * (v.dim() - 1))
               for k, v in backbone.example_context(model, context_length, g).items()}
    if 'class_labels' in context:
        context['class_labels'] = torch.arange(batch) % 10
    return latents, torch.tensor([3.0, 400.0, 999.0][:batch]), context


def alter_config(family: str, **options) -> dict:
    """A tiny ALTER model config of ``family`` at 64 px (8 x 8 latents)."""
    return dict(type='ALTER', num_experts=3, target_sparsity=0.3, hypernet_iters=2,
                resolution=64, latent_scale=8, loss_weights=dict(denoise=1.0),
                **dict(preset(family), **options))
