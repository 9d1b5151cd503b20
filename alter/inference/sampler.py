"""The one denoising loop of the project (demo, evaluation, analysis, benchmarks).

The denoiser is any supported family (a UNet or a diffusion transformer): it is
called through its backbone adapter (``alter.units.backbones``), as its
pipelines call it. Classifier-free guidance runs both halves in one batch; with
an ``ExpertRouter`` the whole batch (both halves) uses the expert of the step's
timestep, looked up on the host.

Schedulers sample as Stable Diffusion pipelines do (``build_sampling_scheduler``):
SD2.1's ``scheduler_config.json`` sets the protocol (PNDM without PRK warm-up
steps, ``set_alpha_to_one=False``, ``steps_offset=1``) and the model keeps its
own training noise schedule.
"""
from typing import Callable, Dict, Optional, Sequence, Type

import diffusers
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, StableDiffusionPipeline, UniPCMultistepScheduler)
from torch import nn
from tqdm import tqdm

from alter.inference.routing import ExpertRouter, uncompiled
from alter.models.conditioning import map_context
from alter.units.backbones import Context, backbone_of

SCHEDULERS: Dict[str, Type] = {
    'ddim': DDIMScheduler,
    'pndm': PNDMScheduler,
    'dpm++': DPMSolverMultistepScheduler,
    'euler': EulerDiscreteScheduler,
    'unipc': UniPCMultistepScheduler,
}

# The content of stabilityai/stable-diffusion-2-1's scheduler/scheduler_config.json, an
# older-style file: diffusers fills in the fields it lacks (timestep_spacing) on load.
SD21_SCHEDULER_CONFIG = {
    '_class_name': 'PNDMScheduler',
    '_diffusers_version': '0.10.0.dev0',
    'beta_end': 0.012,
    'beta_schedule': 'scaled_linear',
    'beta_start': 0.00085,
    'clip_sample': False,
    'num_train_timesteps': 1000,
    'prediction_type': 'v_prediction',
    'set_alpha_to_one': False,
    'skip_prk_steps': True,
    'steps_offset': 1,
    'trained_betas': None,
}

# The fields of a training noise scheduler's config that define the model's
# noise schedule and target; everything else is sampling protocol.
NOISE_SCHEDULE_KEYS = ('num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule',
                       'trained_betas', 'prediction_type', 'rescale_betas_zero_snr')


def build_sampling_scheduler(name: str, training_config: dict,
                             scheduler_config: dict = SD21_SCHEDULER_CONFIG):
    """The scheduler ``name`` exactly as a ``StableDiffusionPipeline`` runs it.

    ``scheduler_config`` is a pipeline's ``scheduler_config.json`` (default SD2.1's),
    with the model's noise schedule (``NOISE_SCHEDULE_KEYS`` of ``training_config``,
    the training scheduler's config) in place of its own. As in diffusers, it is
    loaded as its ``_class_name`` (missing fields take that class's defaults), the
    pipeline rewrites outdated fields (``steps_offset`` to 1, ``clip_sample`` to
    False), and ``name``'s class is made with ``from_config`` of the result --
    the documented way to swap a pipeline's scheduler (fields the file left at
    their defaults take the new class's defaults).
    """
    if name not in SCHEDULERS:
        raise ValueError(f'unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}')
    schedule = {k: v for k, v in training_config.items() if k in NOISE_SCHEDULE_KEYS}
    config = dict(scheduler_config, **schedule)
    loaded = getattr(diffusers, config['_class_name']).from_config(config)
    # The pipeline applies its rewrites of outdated scheduler configs on construction.
    loaded = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=None,
                                     scheduler=loaded, safety_checker=None,
                                     feature_extractor=None,
                                     requires_safety_checker=False).scheduler
    return SCHEDULERS[name].from_config(loaded.config)


def initial_noise(seeds: Sequence[int], shape: Sequence[int], device=None) -> torch.Tensor:
    """(N, *shape) noise, sample i from its own seed: independent of batching."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s))
                        for s in seeds]).to(device)


@torch.no_grad()
def sample(unet: nn.Module, scheduler, noise: torch.Tensor, context: Context,
           uncond_context: Optional[Context], num_steps: int, guidance_scale: float = 1.0,
           router: Optional[ExpertRouter] = None, on_step: Optional[Callable] = None,
           progress: bool = False) -> torch.Tensor:
    """Denoise ``noise`` (B, C, h, w) into latents with ``unet``, any supported denoiser.

    Args:
        context: the denoiser's conditioning for the batch: (B, L, D) text states, or
            a dict of batch-first tensors (``alter.units.backbones``);
            ``uncond_context`` the same for the null condition, or None for no
            guidance (guidance is off when ``guidance_scale == 1``).
        router: routes each step's call to the expert of its timestep.
        on_step: called as ``on_step(index, timestep, expert)`` before each call.
    """
    backbone = backbone_of(uncompiled(unet), 'sampling')
    scheduler.set_timesteps(num_steps)
    guided = uncond_context is not None and guidance_scale != 1.0
    cond = map_context(lambda u, c: torch.cat([u, c]), uncond_context, context) if guided \
        else context
    latents = noise * scheduler.init_noise_sigma
    # One host copy of the schedule: per-step lookups never touch the device.
    timesteps = scheduler.timesteps.tolist()
    try:
        for i, t in enumerate(tqdm(timesteps, disable=not progress, desc='sampling', leave=False)):
            expert = router.select(t) if router is not None else None
            if on_step is not None:
                on_step(i, t, expert)
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            # One timestep per sample (B,), as the adapters take it; the values are the
            # schedule's (int64 or float32), as a pipeline passes them.
            step = torch.full((len(model_input), ), t, device=model_input.device,
                              dtype=scheduler.timesteps.dtype)
            prediction = backbone.predict(unet, model_input, step, cond)
            if guided:
                uncond, text = prediction.chunk(2)
                prediction = uncond + guidance_scale * (text - uncond)
            latents = scheduler.step(prediction, t, latents).prev_sample
    finally:
        if router is not None:
            router.dense()
    return latents
