"""apply_experts on a real diffusers StableDiffusionPipeline built from tiny parts."""
import copy

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel

from alter.inference.sampler import SCHEDULERS
from alter.inference.sd_pipeline import apply_experts

from alter.registry import PRUNING_SPACES
from alter.units.gating import UnitGating

from .conftest import build_tiny_unet
from .test_inference import random_experts


def soft_oracle(unet, experts):
    """The same routing as soft gates, read from the timestep the pipeline passes."""
    gating = UnitGating(PRUNING_SPACES.build(dict(type=experts.space)).find(unet))

    def hook(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs['timestep']
        mask = torch.tensor(experts.masks[experts.expert_at(float(t))], dtype=torch.float32)
        gating.set_gates(mask.expand(args[0].shape[0], -1))

    unet.register_forward_pre_hook(hook, with_kwargs=True)
    return unet


def tiny_pipeline(unet, scheduler_name):
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=12,
                        block_out_channels=(8, ), norm_num_groups=4,
                        down_block_types=('DownEncoderBlock2D', ),
                        up_block_types=('UpDecoderBlock2D', ))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=100))
    scheduler = SCHEDULERS[scheduler_name].from_config(dict(
        num_train_timesteps=1000, beta_schedule='squaredcos_cap_v2', prediction_type='epsilon'))
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def _run(pipe, steps=6):
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 8, 32, generator=g)
    return pipe(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], height=16, width=16,
                num_inference_steps=steps, guidance_scale=4.0, output_type='latent',
                generator=torch.Generator().manual_seed(1)).images


@pytest.mark.parametrize('scheduler', sorted(SCHEDULERS))
def test_routed_pipeline_equals_gated_blend_and_removes(scheduler):
    torch.manual_seed(0)
    unet = build_tiny_unet()
    experts = random_experts(unet, num_experts=3)
    pipe = tiny_pipeline(unet, scheduler)
    dense = _run(pipe)
    routed = apply_experts(pipe, experts)
    hard = _run(pipe)
    used = set()
    original = routed.router.select
    routed.router.select = lambda t: used.add(original(t)) or routed.router.current
    _run(pipe)  # a second generation re-reads the schedule
    routed.remove()
    soft = _run(tiny_pipeline(soft_oracle(copy.deepcopy(unet), experts), scheduler))
    assert (hard - soft).abs().max() <= 1e-4
    assert (hard - dense).abs().max() > 1e-3
    assert len(used) > 1
    assert torch.equal(_run(pipe), dense)  # removing the routing restores the dense model


def test_apply_experts_refuses_a_mismatched_unet():
    unet = build_tiny_unet()
    experts = random_experts(unet)
    other = build_tiny_unet()
    other.register_to_config(norm_num_groups=4)
    with pytest.raises(ValueError, match='another UNet architecture'):
        apply_experts(tiny_pipeline(other, 'ddim'), experts)
    with pytest.raises(TypeError, match='no unet/scheduler'):
        apply_experts(object(), experts)
