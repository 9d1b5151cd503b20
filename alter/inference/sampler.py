"""The one denoising loop of the project (demo, evaluation, analysis, benchmarks).

Classifier-free guidance runs both halves in one batch; with an
``ExpertRouter`` the whole batch (both halves) uses the expert of the step's
timestep, looked up on the host.
"""
from typing import Callable, Dict, Optional, Sequence, Type

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, UniPCMultistepScheduler, UNet2DConditionModel)
from tqdm import tqdm

from alter.inference.routing import ExpertRouter

SCHEDULERS: Dict[str, Type] = {
    'ddim': DDIMScheduler,
    'pndm': PNDMScheduler,
    'dpm++': DPMSolverMultistepScheduler,
    'euler': EulerDiscreteScheduler,
    'unipc': UniPCMultistepScheduler,
}


def build_sampling_scheduler(name: str, training_config: dict):
    """A sampling scheduler of the family ``name`` on the training noise schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f'unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}')
    return SCHEDULERS[name].from_config(training_config)


def initial_noise(seeds: Sequence[int], shape: Sequence[int], device=None) -> torch.Tensor:
    """(N, *shape) noise, sample i from its own seed: independent of batching."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s))
                        for s in seeds]).to(device)


@torch.no_grad()
def sample(unet: UNet2DConditionModel, scheduler, noise: torch.Tensor, context: torch.Tensor,
           uncond_context: Optional[torch.Tensor], num_steps: int, guidance_scale: float = 1.0,
           router: Optional[ExpertRouter] = None, on_step: Optional[Callable] = None,
           progress: bool = False) -> torch.Tensor:
    """Denoise ``noise`` (B, C, h, w) into latents.

    Args:
        context: (B, L, D) text states; ``uncond_context`` (B, L, D) or None
            for no guidance (guidance is off when ``guidance_scale == 1``).
        router: routes each step's UNet call to the expert of its timestep.
        on_step: called as ``on_step(index, timestep, expert)`` before each UNet call.
    """
    scheduler.set_timesteps(num_steps)
    guided = uncond_context is not None and guidance_scale != 1.0
    cond = torch.cat([uncond_context, context]) if guided else context
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
            prediction = unet(model_input, t, cond).sample
            if guided:
                uncond, text = prediction.chunk(2)
                prediction = uncond + guidance_scale * (text - uncond)
            latents = scheduler.step(prediction, t, latents).prev_sample
    finally:
        if router is not None:
            router.dense()
    return latents
