"""apply_experts on real diffusers pipelines built from tiny random components.

The routing oracle (``ExecutionProbe``): per UNet call, the timestep the UNet
received and how often each unit ran, counted on the unit's first norm layer
(a hook on the unit module itself fires even when the unit is skipped). Every
call must run exactly the units of ``route[t]``'s mask, once each.
"""
import copy
import json
from functools import partial

import diffusers
import pytest
import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, DDPMScheduler,
                       DPMSolverMultistepScheduler, EDMEulerScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler, StableDiffusionControlNetPipeline,
                       StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                       StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from mmengine.config import Config
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from alter.inference.experts import (ExpertSet, load_experts, load_unet, save_checkpoint,
                                     weights_fingerprint)
from alter.inference.sampler import (NOISE_SCHEDULE_KEYS, SCHEDULERS, SD21_SCHEDULER_CONFIG,
                                     build_sampling_scheduler, sample)
from alter.inference.sd_pipeline import apply_experts
from alter.registry import PRUNING_SPACES
from alter.units.gating import UnitGating

from .conftest import ROOT, TINY_UNET_CONFIG, build_tiny_unet
from .test_inference import random_experts

TRAINING = DDPMScheduler(beta_schedule='squaredcos_cap_v2', prediction_type='epsilon').config


class ExecutionProbe:
    """Records, per call of ``unet``, the timestep values it received and (with
    ``count_units``) the number of times each unit of ``space`` ran.

    Under torch.compile only timesteps can be recorded: the norm-layer hooks
    would be traced into the graph.
    """

    def __init__(self, unet, space: str = 'paper', count_units: bool = True) -> None:
        self.units = PRUNING_SPACES.build(dict(type=space)).find(unet)
        self.calls = []  # (timestep values, runs per unit)
        unet.register_forward_pre_hook(self._call, with_kwargs=True)
        for i, unit in enumerate(self.units if count_units else []):
            norm = next(m for m in unit.module.modules()
                        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)))
            norm.register_forward_hook(partial(self._ran, i))

    @torch.compiler.disable  # runs outside a compiled UNet's graph
    def _call(self, module, args, kwargs) -> None:
        t = args[1] if len(args) > 1 else kwargs['timestep']
        values = t.reshape(-1).tolist() if torch.is_tensor(t) else [t]
        self.calls.append((values, [0] * len(self.units)))

    def _ran(self, index: int, *_) -> None:
        self.calls[-1][1][index] += 1

    @property
    def timesteps(self) -> list:
        return [values[0] for values, _ in self.calls]

    def assert_routed(self, experts: ExpertSet) -> set:
        """Every call ran the units of its timestep's expert once; returns the experts used."""
        assert self.calls, 'the UNet was never called'
        used = set()
        for values, runs in self.calls:
            assert len(set(values)) == 1
            expert = experts.route[round(values[0])]
            assert runs == [int(keep) for keep in experts.masks[expert]], values[0]
            used.add(expert)
        return used


def tiny_vae(latent_channels: int = 12) -> AutoencoderKL:
    """One level, so latents have the image's size."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(8, ), norm_num_groups=4,
                         down_block_types=('DownEncoderBlock2D', ),
                         up_block_types=('UpDecoderBlock2D', ))


def tiny_text_encoder(cls=CLIPTextModel):
    torch.manual_seed(0)
    return cls(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                              num_hidden_layers=2, vocab_size=100, projection_dim=32))


def tiny_pipeline(unet, scheduler_name: str = 'ddim', cls=StableDiffusionPipeline, **parts):
    """A Stable Diffusion pipeline of class ``cls`` around ``unet``."""
    scheduler = SCHEDULERS[scheduler_name].from_config(TRAINING)
    return cls(vae=tiny_vae(unet.config.out_channels), text_encoder=tiny_text_encoder(),
               tokenizer=None, unet=unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None,
               requires_safety_checker=False, **parts)


def _embeds():
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 8, 32, generator=g)
    return dict(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:])


def _image(channels: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.rand(1, channels, 16, 16, generator=torch.Generator().manual_seed(seed))


def _run(pipe, steps: int = 6, **kwargs) -> torch.Tensor:
    if 'image' not in kwargs:  # image pipelines take the image's size
        kwargs.update(height=16, width=16)
    return pipe(**_embeds(), num_inference_steps=steps, guidance_scale=4.0, output_type='latent',
                generator=torch.Generator().manual_seed(1), **kwargs).images


def soft_oracle(unet, experts):
    """The same routing as soft gates, read from the timestep the pipeline passes."""
    gating = UnitGating(PRUNING_SPACES.build(dict(type=experts.space)).find(unet))

    def hook(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs['timestep']
        mask = torch.tensor(experts.masks[experts.expert_at(float(t))], dtype=torch.float32)
        gating.set_gates(mask.expand(args[0].shape[0], -1))

    unet.register_forward_pre_hook(hook, with_kwargs=True)
    return unet


@pytest.mark.parametrize('scheduler', sorted(SCHEDULERS))
def test_routed_pipeline_equals_gated_blend_and_removes(scheduler):
    unet = build_tiny_unet()
    experts = random_experts(unet, num_experts=3)
    pipe = tiny_pipeline(unet, scheduler)
    dense = _run(pipe)
    routed = apply_experts(pipe, experts)
    probe = ExecutionProbe(unet)
    hard = _run(pipe)
    assert len(probe.assert_routed(experts)) > 1
    routed.remove()
    soft = _run(tiny_pipeline(soft_oracle(copy.deepcopy(unet), experts), scheduler))
    assert (hard - soft).abs().max() <= 1e-4
    assert (hard - dense).abs().max() > 1e-3
    assert torch.equal(_run(pipe), dense)  # removing the routing restores the dense model
    assert 'progress_bar' not in pipe.__dict__


@pytest.mark.parametrize('scheduler, options', [
    (diffusers.EulerAncestralDiscreteScheduler, {}), (diffusers.LCMScheduler, {}),
    (diffusers.HeunDiscreteScheduler, {}), (diffusers.LMSDiscreteScheduler, {}),
    (diffusers.DEISMultistepScheduler, {}), (diffusers.KDPM2DiscreteScheduler, {}),
    # Karras sigmas of the cosine schedule repeat timesteps, which diffusers cannot step through.
    (DPMSolverMultistepScheduler, dict(use_karras_sigmas=True, beta_schedule='scaled_linear'))],
    ids=['euler-a', 'lcm', 'heun', 'lms', 'deis', 'kdpm2', 'dpm++-karras'])
def test_other_discrete_schedulers_route_every_call(scheduler, options):
    unet = build_tiny_unet()
    experts = random_experts(unet, num_experts=6)
    pipe = tiny_pipeline(unet)
    pipe.scheduler = scheduler.from_config(TRAINING, **options)
    apply_experts(pipe, experts)
    probe = ExecutionProbe(unet)
    _run(pipe, 8)
    assert len(probe.assert_routed(experts)) > 1


# -- every pipeline gets the expert of the timestep its UNet receives ---------------------

def _text_to_image(unet):
    return tiny_pipeline(unet), dict(steps=20), 20


def _callback(unet):
    """A callback_on_step_end that changes nothing."""
    return tiny_pipeline(unet), dict(steps=20, callback_on_step_end=lambda p, i, t, kw: kw), 20


def _img2img(strength, unet):
    pipe = tiny_pipeline(unet, cls=StableDiffusionImg2ImgPipeline)
    return pipe, dict(steps=20, image=_image(), strength=strength), int(20 * strength)


def _inpainting(unet):
    """An inpainting UNet (SD2's kind): latents, mask and masked-image latents in."""
    pipe = tiny_pipeline(unet, cls=StableDiffusionInpaintPipeline)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1
    return pipe, dict(steps=20, image=_image(), mask_image=mask, strength=0.6), 12


def _controlnet(unet):
    torch.manual_seed(3)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, ))
    pipe = tiny_pipeline(unet, cls=StableDiffusionControlNetPipeline, controlnet=controlnet)
    return pipe, dict(steps=20, image=_image()), 20


INPAINTING = dict(in_channels=9, out_channels=4)  # 4 latent + 1 mask + 4 masked-image channels
CASES = {'text-to-image': _text_to_image, 'callback_on_step_end': _callback,
         'img2img-0.3': partial(_img2img, 0.3), 'img2img-0.5': partial(_img2img, 0.5),
         'img2img-0.8': partial(_img2img, 0.8), 'inpainting': _inpainting,
         'controlnet': _controlnet}


@pytest.mark.parametrize('case', CASES)
def test_every_call_runs_the_expert_of_the_timestep_it_receives(case):
    unet = build_tiny_unet(**(INPAINTING if case == 'inpainting' else {}))
    experts = random_experts(unet, num_experts=6)
    pipe, kwargs, calls = CASES[case](unet)
    steps = kwargs.pop('steps')
    routed = apply_experts(pipe, experts)
    probe = ExecutionProbe(unet)
    out = _run(pipe, steps, **kwargs)
    # The pipeline ran the tail of its schedule (strength < 1 starts mid-schedule).
    assert probe.timesteps == pipe.scheduler.timesteps[steps - calls:].tolist()
    assert len(probe.assert_routed(experts)) > 1
    if case == 'callback_on_step_end':
        kwargs.pop('callback_on_step_end')
        assert torch.equal(_run(pipe, steps, **kwargs), out)
    routed.remove()


def tiny_sdxl_unet(seed: int) -> UNet2DConditionModel:
    """SDXL's topology at toy widths: text_time conditioning, two transformer blocks per
    Transformer2DModel at the second level, a 64-d context from two text encoders."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(16, 32), down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type='text_time', addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=8).eval()


def test_sdxl_base_to_refiner_split_routes_both_halves():
    """Base denoises to denoising_end=0.6, a refiner with its own routed UNet from
    denoising_start=0.6: the refiner's UNet receives only the tail of the schedule."""
    parts = dict(vae=tiny_vae(latent_channels=4), text_encoder=tiny_text_encoder(),
                 text_encoder_2=tiny_text_encoder(CLIPTextModelWithProjection), tokenizer=None,
                 tokenizer_2=None)
    base_unet, refiner_unet = tiny_sdxl_unet(0), tiny_sdxl_unet(1)
    base = StableDiffusionXLPipeline(unet=base_unet, scheduler=DDIMScheduler.from_config(TRAINING),
                                     **parts)
    refiner = StableDiffusionXLImg2ImgPipeline(
        unet=refiner_unet, scheduler=DDIMScheduler.from_config(TRAINING),
        requires_aesthetics_score=False, **parts)
    base_experts = random_experts(base_unet, num_experts=5, seed=1)
    refiner_experts = random_experts(refiner_unet, num_experts=5, seed=2)
    apply_experts(base, base_experts)
    apply_experts(refiner, refiner_experts)
    base_probe, refiner_probe = ExecutionProbe(base_unet), ExecutionProbe(refiner_unet)
    g = torch.Generator().manual_seed(0)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 64, generator=g),
                  negative_prompt_embeds=torch.randn(1, 8, 64, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    common = dict(num_inference_steps=20, guidance_scale=4.0, output_type='latent', **embeds)
    latents = base(height=16, width=16, denoising_end=0.6, **common).images
    refiner(image=latents, denoising_start=0.6, **common)
    schedule = base.scheduler.timesteps.tolist()
    assert base_probe.timesteps == [t for t in schedule if t >= 400]
    assert refiner_probe.timesteps == [t for t in schedule if t < 400]
    assert len(base_probe.assert_routed(base_experts)) > 1
    assert len(refiner_probe.assert_routed(refiner_experts)) > 1


def test_deepcopy_of_a_routed_unet_routes_itself_and_remove_makes_the_pipeline_dense():
    unet = build_tiny_unet()
    experts = random_experts(unet, num_experts=6)
    pipe = tiny_pipeline(unet)
    dense = _run(pipe, 12)
    routed = apply_experts(pipe, experts)
    _run(pipe, 20)  # the original has routed a generation of another length
    pipe.unet = copy.deepcopy(unet)
    probe = ExecutionProbe(pipe.unet)
    _run(pipe, 12)
    assert len(probe.assert_routed(experts)) > 1
    routed.remove()
    assert torch.equal(_run(pipe, 12), dense)  # the copy is dense again
    pipe.unet = unet
    assert torch.equal(_run(pipe, 12), dense)  # and so is the original


def test_two_pipelines_sharing_a_unet_each_get_their_own_timesteps():
    """A text-to-image pipeline (DDIM, 8 steps) runs a whole img2img generation of a second
    pipeline with its own scheduler (Euler, 12 steps) from inside its own denoising loop."""
    unet = build_tiny_unet()
    experts = random_experts(unet, num_experts=6)
    first = tiny_pipeline(unet)
    second = StableDiffusionImg2ImgPipeline(**dict(
        first.components, scheduler=EulerDiscreteScheduler.from_config(TRAINING)))
    routed_first = apply_experts(first, experts)
    apply_experts(second, experts)  # the UNet is routed already: shared, checked
    probe = ExecutionProbe(unet)

    def run_second(pipe, i, t, kwargs):
        if i == 3:
            _run(second, 12, image=_image(), strength=0.75)
        return kwargs

    _run(first, 8, callback_on_step_end=run_second)
    euler = second.scheduler.timesteps[3:].tolist()
    ddim = first.scheduler.timesteps.tolist()
    assert probe.timesteps == ddim[:4] + euler + ddim[4:]
    assert len(probe.assert_routed(experts)) > 1
    routed_first.remove()
    with pytest.raises(RuntimeError, match='replaced after apply_experts'):
        _run(second, 12, image=_image(), strength=0.75)  # its shared UNet is dense now


# -- refusals ---------------------------------------------------------------------------

def test_a_replaced_unet_is_refused_at_the_next_generation():
    unet = build_tiny_unet()
    experts = random_experts(unet)
    pipe = tiny_pipeline(unet)
    routed = apply_experts(pipe, experts)
    pipe.unet = build_tiny_unet()  # e.g. loading weights after apply_experts
    with pytest.raises(RuntimeError, match='replaced after apply_experts'):
        _run(pipe)
    routed.remove()
    apply_experts(pipe, experts)  # routing the new UNet again works
    probe = ExecutionProbe(pipe.unet)
    _run(pipe)
    probe.assert_routed(experts)


def test_weights_other_than_the_trained_ones_are_refused_unless_allowed():
    trained = build_tiny_unet()
    with torch.no_grad():
        trained.conv_out.bias.add_(1e-3)  # "training" changed the weights
    experts = random_experts(trained)
    pretrained = build_tiny_unet()  # forgot pipe.unet = load_unet(checkpoint)
    with pytest.raises(ValueError, match=r'not the one the experts were trained with.*float32 '
                                         r'weights differ.*load_unet.*allow_other_weights'):
        apply_experts(tiny_pipeline(pretrained), experts)
    apply_experts(tiny_pipeline(pretrained), experts, allow_other_weights=True).remove()
    for dtype in (torch.float16, torch.bfloat16):  # a cast after loading is the same UNet
        apply_experts(tiny_pipeline(copy.deepcopy(trained).to(dtype)), experts).remove()
    unchecked = ExpertSet(*[getattr(experts, f) for f in ('unit_names', 'masks', 'route', 'space',
                                                          'architecture', 'keep_ratio')])
    with pytest.raises(ValueError, match='records no weights fingerprint'):
        apply_experts(tiny_pipeline(trained), unchecked)


def test_checkpoint_fingerprint_survives_half_export_and_refuses_other_weights(tmp_path):
    unet = build_tiny_unet()
    experts = random_experts(unet)
    data = dict(unit_names=list(experts.unit_names), expert_masks=[list(m) for m in experts.masks],
                routing_table=list(experts.route), space='paper',
                architecture=experts.architecture, weights_fingerprint=experts.weights_fingerprint)
    save_checkpoint(tmp_path / 'half', unet, data, half=True)
    apply_experts(tiny_pipeline(load_unet(tmp_path / 'half')), tmp_path / 'half').remove()
    with pytest.raises(ValueError, match='exported from another UNet'):
        save_checkpoint(tmp_path / 'other', build_tiny_unet(seed=1), data)
    assert load_experts(tmp_path / 'half').weights_fingerprint != experts.weights_fingerprint


def test_fingerprint_samples_tensors_past_float32_integer_precision():
    """2**24 + 4 elements: in float32 the last position, 2**24 + 3, rounds to 2**24 + 4."""
    big = nn.Linear(1, 2**24 + 4, bias=False)
    with torch.no_grad():
        big.weight.zero_()[-1] = 1.0
    changed = weights_fingerprint(big)
    with torch.no_grad():
        big.weight[-1] = 2.0  # the last element is sampled
    assert weights_fingerprint(big)['float32'] != changed['float32']


@pytest.mark.parametrize('scheduler, message', [
    (EulerDiscreteScheduler.from_config(TRAINING, timestep_type='continuous',
                                        prediction_type='v_prediction'), 'log\\(sigma\\)/4'),
    (EDMEulerScheduler(), 'no discrete noise schedule'),
    (FlowMatchEulerDiscreteScheduler(), 'no discrete noise schedule'),
    (DPMSolverMultistepScheduler.from_config(TRAINING, use_flow_sigmas=True,
                                             prediction_type='flow_prediction'), 'sigma \\* T'),
    (DDIMScheduler.from_config(TRAINING, num_train_timesteps=500), '500 training timesteps'),
], ids=['euler-continuous', 'edm-euler', 'flow-match', 'dpm-flow-sigmas', 'other-grid'])
def test_continuous_time_schedulers_are_refused(scheduler, message):
    unet = build_tiny_unet()
    experts = random_experts(unet)
    pipe = tiny_pipeline(unet)
    pipe.scheduler = scheduler
    with pytest.raises(ValueError, match=message):
        apply_experts(pipe, experts)
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return  # StableDiffusionPipeline itself fails on it before denoising (no init_noise_sigma)
    pipe.scheduler = DDIMScheduler.from_config(TRAINING)
    apply_experts(pipe, experts)
    pipe.scheduler = scheduler  # swapped after applying: refused at the next generation
    with pytest.raises(ValueError, match=message):
        _run(pipe)


def test_off_grid_timesteps_are_refused_not_clamped():
    unet = build_tiny_unet()
    apply_experts(tiny_pipeline(unet), random_experts(unet))
    x, context = torch.randn(2, 12, 16, 16), torch.randn(2, 8, 32)
    for t in (torch.tensor(1000), torch.tensor(-1.0), torch.tensor(float('nan'))):
        with pytest.raises(ValueError, match='off the training grid'):
            unet(x, t, context)
    with pytest.raises(ValueError, match='one UNet call runs one expert'):
        unet(x, torch.tensor([10, 990]), context)


# -- the sampling protocol: the project's sampler is a StableDiffusionPipeline ------------

def _training_config(name: str) -> dict:
    path = TINY_UNET_CONFIG if name == 'tiny' else f'{ROOT}/configs/_base_/models/{name}.py'
    return DDPMScheduler(**Config.fromfile(path).model.noise_scheduler).config


# An older-style scheduler_config.json (early SD v1): no steps_offset, set_alpha_to_one or
# prediction_type, clip_sample on. StableDiffusionPipeline rewrites steps_offset and
# clip_sample on load; swapped schedulers take their own defaults for the missing fields.
OLDER_SCHEDULER_CONFIG = {
    '_class_name': 'PNDMScheduler', '_diffusers_version': '0.2.2', 'beta_end': 0.012,
    'beta_schedule': 'scaled_linear', 'beta_start': 0.00085, 'num_train_timesteps': 1000,
    'skip_prk_steps': True, 'clip_sample': True}

PROTOCOL_CASES = [(model, 'sd21', name) for model in ('shapes_ldm', 'sd21_unet', 'tiny')
                  for name in sorted(SCHEDULERS)]
PROTOCOL_CASES += [('shapes_ldm', 'older', name) for name in sorted(SCHEDULERS)]


@pytest.mark.parametrize('model, file, name', PROTOCOL_CASES)
def test_sampler_is_bit_identical_to_a_stable_diffusion_pipeline(tmp_path, model, file, name):
    """The reference loads ``scheduler/scheduler_config.json`` (SD2.1's, or an older-style
    one, with the model's noise schedule) as a StableDiffusionPipeline does, then swaps in
    scheduler ``name`` with ``from_config`` as the diffusers docs do."""
    training = _training_config(model)
    file_config = SD21_SCHEDULER_CONFIG if file == 'sd21' else OLDER_SCHEDULER_CONFIG
    written = dict(file_config, **{k: training[k] for k in NOISE_SCHEDULE_KEYS if k in training})
    (tmp_path / 'scheduler_config.json').write_text(json.dumps(written))
    unet = build_tiny_unet()
    loaded = getattr(diffusers, written['_class_name']).from_pretrained(tmp_path)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=None,
                                   unet=unet, scheduler=loaded, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)
    probe = ExecutionProbe(unet)
    noise = torch.randn(1, 12, 16, 16, generator=torch.Generator().manual_seed(5))
    embeds = _embeds()
    reference = pipe(**embeds, latents=noise.clone(), num_inference_steps=4, guidance_scale=3.0,
                     output_type='latent').images
    calls = len(probe.calls)
    ours = sample(unet, build_sampling_scheduler(name, training, file_config), noise,
                  embeds['prompt_embeds'], embeds['negative_prompt_embeds'], 4, 3.0)
    assert torch.equal(ours, reference)
    assert len(probe.calls) == 2 * calls == 2 * (5 if name == 'pndm' else 4)  # no PRK steps
