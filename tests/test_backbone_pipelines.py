"""apply_experts on the pipelines of every backbone family, built from tiny random components:
StableDiffusionXLPipeline, DiTPipeline, PixArtAlphaPipeline, StableDiffusion3Pipeline,
FluxPipeline. Every call runs exactly the units of the expert of the timestep value the
model receives (looked up on the experts' grid), the result equals the gated blend, and
``remove()`` restores the dense pipeline bit for bit."""
import copy
import inspect

import pytest
import torch
from diffusers import (DDIMScheduler, DiTPipeline, DPMSolverMultistepScheduler,
                       FlowMatchEulerDiscreteScheduler, FluxPipeline, PixArtAlphaPipeline,
                       StableDiffusion3Pipeline, StableDiffusionXLPipeline)
from transformers import CLIPTextModelWithProjection

from alter.inference.experts import ExpertSet, load_unet, save_checkpoint, weights_fingerprint
from alter.inference.sd_pipeline import apply_experts
from alter.registry import PRUNING_SPACES
from alter.units.backbones import backbone_of
from alter.units.gating import UnitGating
from alter.units.macs import architecture_key

from .backbone_presets import build_denoiser, example_inputs
from .test_sd_pipeline import TRAINING, ExecutionProbe, tiny_text_encoder, tiny_vae

FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)
# The value each family's model receives per unit of sigma (alter.inference.grids).
SIGMA_SCALE = {'sd3': 1000.0, 'flux': 1.0}


def _arguments(model, args, kwargs) -> dict:
    """A call's arguments by name, from the class's forward (the instance's may be routed)."""
    bound = inspect.signature(type(model).forward).bind_partial(model, *args, **kwargs).arguments
    bound.pop('self')
    return bound


class Probe(ExecutionProbe):
    """``ExecutionProbe`` for models that take the timestep by keyword, routed on any grid."""

    def __init__(self, model) -> None:
        self.model = model
        super().__init__(model)

    @torch.compiler.disable
    def _call(self, module, args, kwargs) -> None:
        t = _arguments(self.model, args, kwargs)['timestep']
        self.calls.append((t.reshape(-1).tolist(), [0] * len(self.units)))

    def assert_routed(self, experts: ExpertSet) -> set:
        assert self.calls, 'the model was never called'
        used = set()
        for values, runs in self.calls:
            assert len(set(values)) == 1
            expert = experts.expert_at(values[0])
            assert runs == [int(keep) for keep in experts.masks[expert]], values[0]
            used.add(expert)
        return used


def random_experts(model, family: str, num_experts: int = 3) -> ExpertSet:
    names = [u.name for u in PRUNING_SPACES.build(dict(type='paper')).find(model)]
    masks = (torch.rand(num_experts, len(names), generator=torch.Generator().manual_seed(0))
             > 0.4).int().tolist()
    grid = dict(timestep_grid=dict(type='SigmaGrid', sigma_scale=SIGMA_SCALE[family])) \
        if family in SIGMA_SCALE else {}
    return ExpertSet.from_dict(dict(
        unit_names=names, expert_masks=masks, space='paper',
        routing_table=(torch.arange(1000) * num_experts // 1000).tolist(),  # equal intervals
        architecture=dict(key=architecture_key(model)), keep_ratio={},
        weights_fingerprint=weights_fingerprint(model), **grid))


def soft_oracle(model, experts: ExpertSet):
    """The same routing as soft gates, read from the timestep the pipeline passes."""
    gating = UnitGating(PRUNING_SPACES.build(dict(type='paper')).find(model))

    def hook(module, args, kwargs):
        bound = _arguments(model, args, kwargs)
        t = bound['timestep'].reshape(-1)[0].item()
        mask = torch.tensor(experts.masks[experts.expert_at(t)], dtype=torch.float32)
        sample = next(iter(bound.values()))  # the latents: sample or hidden_states
        gating.set_gates(mask.expand(sample.shape[0], -1))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return model


def _embeds(*shapes):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g) for shape in shapes]


def sdxl():
    parts = dict(vae=tiny_vae(latent_channels=4), text_encoder=tiny_text_encoder(),
                 text_encoder_2=tiny_text_encoder(CLIPTextModelWithProjection), tokenizer=None,
                 tokenizer_2=None, scheduler=DDIMScheduler.from_config(TRAINING))
    states, negative, pooled, negative_pooled = _embeds((1, 8, 64), (1, 8, 64), (1, 32), (1, 32))
    call = dict(prompt_embeds=states, negative_prompt_embeds=negative,
                pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled,
                height=16, width=16, guidance_scale=4.0, output_type='latent')
    return StableDiffusionXLPipeline, 'unet', parts, call


def dit():
    parts = dict(vae=tiny_vae(latent_channels=4),
                 scheduler=DPMSolverMultistepScheduler.from_config(TRAINING))
    return DiTPipeline, 'transformer', parts, dict(class_labels=[3, 7], guidance_scale=4.0,
                                                   output_type='pt')


def pixart():
    parts = dict(vae=tiny_vae(latent_channels=4), text_encoder=None, tokenizer=None,
                 scheduler=DPMSolverMultistepScheduler.from_config(TRAINING))
    states, negative = _embeds((1, 6, 32), (1, 6, 32))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    call = dict(prompt_embeds=states, prompt_attention_mask=mask, negative_prompt=None,
                negative_prompt_embeds=negative,
                negative_prompt_attention_mask=mask, height=16, width=16, guidance_scale=4.0,
                use_resolution_binning=False, output_type='latent')
    return PixArtAlphaPipeline, 'transformer', parts, call


def sd3():
    parts = dict(vae=tiny_vae(latent_channels=4), text_encoder=None, tokenizer=None,
                 text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    states, negative, pooled, negative_pooled = _embeds((1, 6, 32), (1, 6, 32), (1, 64), (1, 64))
    call = dict(prompt_embeds=states, negative_prompt_embeds=negative,
                pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled,
                height=16, width=16, guidance_scale=4.0, output_type='latent')
    return StableDiffusion3Pipeline, 'transformer', parts, call


def flux():
    parts = dict(vae=tiny_vae(latent_channels=4), text_encoder=None, tokenizer=None,
                 text_encoder_2=None, tokenizer_2=None,
                 scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER))
    states, pooled = _embeds((1, 6, 32), (1, 32))
    call = dict(prompt_embeds=states, pooled_prompt_embeds=pooled, height=16, width=16,
                guidance_scale=3.5, output_type='latent')
    return FluxPipeline, 'transformer', parts, call


PIPELINES = dict(sdxl=sdxl, dit=dit, pixart=pixart, sd3=sd3, flux=flux)


def _run(pipe, call, steps: int = 6) -> torch.Tensor:
    return pipe(**call, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(1)).images


@pytest.mark.parametrize('family', sorted(PIPELINES))
def test_routed_pipeline_equals_gated_blend_and_removes(family):
    cls, attribute, parts, call = PIPELINES[family]()
    model = build_denoiser(family)
    experts = random_experts(model, family)
    pipe = cls(**{attribute: model}, **parts)
    dense = _run(pipe, call)
    routed = apply_experts(pipe, experts)  # the same one line for every family
    probe = Probe(model)
    hard = _run(pipe, call)
    assert len(probe.assert_routed(experts)) > 1
    routed.remove()
    assert torch.equal(_run(pipe, call), dense)  # removing the routing restores the dense model
    assert 'progress_bar' not in pipe.__dict__
    setattr(pipe, attribute, soft_oracle(copy.deepcopy(model), experts))
    soft = _run(pipe, call)
    assert (hard - soft).abs().max() <= 1e-4
    assert (hard - dense).abs().max() > 1e-3


def test_flow_models_route_by_the_sigma_they_receive():
    """SD3 receives sigma * 1000, Flux sigma: the first step (sigma = 1) runs the expert of
    the last row either way; a value off the grid raises instead of being clamped."""
    for family in SIGMA_SCALE:
        cls, attribute, parts, call = PIPELINES[family]()
        model = build_denoiser(family)
        experts = random_experts(model, family)
        pipe = cls(**{attribute: model}, **parts)
        apply_experts(pipe, experts)
        probe = Probe(model)
        _run(pipe, call)
        first = probe.calls[0][0][0]
        assert first == pytest.approx(SIGMA_SCALE[family])
        assert experts.expert_at(first) == experts.route[999]
        latents, _, context = example_inputs(model, batch=1)
        for t in (0.0, 1500.0):  # on the training scale: sigma 0 and 1.5
            with pytest.raises(ValueError, match='off the training grid'):
                backbone_of(model).predict(model, latents, torch.tensor([t]), context)


def test_schedulers_must_match_the_experts_grid():
    _, attribute, parts, call = PIPELINES['sd3']()
    model = build_denoiser('sd3')
    pipe = StableDiffusion3Pipeline(**{attribute: model}, **dict(
        parts, scheduler=DDIMScheduler.from_config(TRAINING)))
    with pytest.raises(ValueError, match='does not pass the model flow-matching sigmas'):
        apply_experts(pipe, random_experts(model, 'sd3'))
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, num_train_timesteps=500)
    with pytest.raises(ValueError, match='500 training timesteps'):
        apply_experts(pipe, random_experts(model, 'sd3'))
    dit_model = build_denoiser('dit')
    _, attribute, parts, _ = PIPELINES['dit']()
    pipe = DiTPipeline(transformer=dit_model,
                       **dict(parts, scheduler=FlowMatchEulerDiscreteScheduler()))
    with pytest.raises(ValueError, match='no discrete noise schedule'):
        apply_experts(pipe, random_experts(dit_model, 'dit'))


def test_transformer_checkpoints_round_trip(tmp_path):
    """A transformer is saved in transformer/ (its pipelines' sub-folder) with the expert
    file, loaded back by load_unet and routed from the directory."""
    model = build_denoiser('flux')
    experts = random_experts(model, 'flux')
    data = dict(unit_names=list(experts.unit_names), expert_masks=[list(m) for m in experts.masks],
                routing_table=list(experts.route), space='paper',
                architecture=experts.architecture,
                timestep_grid=dict(type='SigmaGrid', sigma_scale=1.0))
    save_checkpoint(tmp_path / 'ckpt', model, data)
    assert sorted(p.name for p in (tmp_path / 'ckpt').iterdir()) == ['experts.json', 'transformer']
    loaded = load_unet(tmp_path / 'ckpt')
    assert type(loaded) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values()))
    cls, attribute, parts, call = PIPELINES['flux']()
    pipe = cls(**{attribute: loaded}, **parts)
    routed = apply_experts(pipe, tmp_path / 'ckpt')
    assert routed.experts.grid == experts.grid
    probe = Probe(loaded)
    _run(pipe, call, steps=4)
    probe.assert_routed(routed.experts)
