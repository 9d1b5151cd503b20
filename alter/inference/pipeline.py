"""Text-to-image generation with a (routed) denoiser: the embedded benchmark's pipeline.

``TextToImage`` ties a denoiser (a UNet or a diffusion transformer, named
``unet`` as everywhere in the project), a frozen autoencoder and text encoder
and the training noise schedule to the shared ``sample`` loop. With an
``ExpertRouter`` on its denoiser, each step runs the expert of its timestep.
"""
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from alter.inference.experts import ExpertSet
from alter.inference.routing import ExpertRouter
from alter.inference.sampler import build_sampling_scheduler, initial_noise, sample
from alter.models.conditioning import context_to
from alter.units.backbones import backbone_of
from alter.units.macs import MacTable
from alter.utils.cli import InputError


class TextToImage:
    """Captions + seeds -> images (N, 3, H, W) in [-1, 1].

    Args:
        unet: the (student or dense) denoiser, of any family with a backbone adapter.
        autoencoder, text_encoder: frozen components (``alter.models.conditioning``).
        noise_config: the training noise scheduler's config.
        latent_size: (h, w) of the latents.
        router: optional ``ExpertRouter`` attached to ``unet``; its routing table
            must have one entry per training timestep of ``noise_config``.
    """

    def __init__(self, unet, autoencoder, text_encoder, noise_config: dict,
                 latent_size: Sequence[int], router: Optional[ExpertRouter] = None) -> None:
        timesteps = noise_config['num_train_timesteps']
        if router is not None and len(router.experts.route) != timesteps:
            raise InputError(f'the routing_table of the experts has {len(router.experts.route)} '
                             f'entries, but the noise schedule has {timesteps} training '
                             'timesteps: the experts belong to another model; use the config '
                             'they were trained with')
        self.unet, self.autoencoder, self.text_encoder = unet, autoencoder, text_encoder
        self.noise_config = dict(noise_config)
        self.latent_shape = (backbone_of(unet, 'TextToImage').latent_channels(unet),
                             *latent_size)
        self.router = router

    @classmethod
    def from_model(cls, model, unet=None, router: Optional[ExpertRouter] = None) -> 'TextToImage':
        """From a ``LatentDiffusion``/``ALTER`` model (its UNet unless ``unet`` is given)."""
        size = model.resolution // model.latent_scale
        return cls(unet if unet is not None else model.unet, model.autoencoder,
                   model.text_encoder, model.scheduler.config, (size, size), router)

    @torch.no_grad()
    def __call__(self, captions: Sequence[str], seeds: Sequence[int], num_steps: int,
                 guidance_scale: float = 3.0, scheduler: str = 'ddim', batch_size: int = 64,
                 progress: bool = True) -> torch.Tensor:
        if len(captions) != len(seeds):
            raise ValueError(f'one seed per caption: got {len(captions)} captions and '
                             f'{len(seeds)} seeds')
        device = next(self.unet.parameters()).device
        images: List[torch.Tensor] = []
        batches = range(0, len(captions), batch_size)
        for start in tqdm(batches, disable=not progress, desc=f'{num_steps}-step generation'):
            part = list(captions[start:start + batch_size])
            context = context_to(self.text_encoder(part), device)
            uncond = context_to(self.text_encoder([self.text_encoder.null_condition] * len(part)),
                                device)
            noise = initial_noise(seeds[start:start + batch_size], self.latent_shape, device)
            latents = sample(self.unet, build_sampling_scheduler(scheduler, self.noise_config),
                             noise, context, uncond, num_steps, guidance_scale, self.router)
            images.append(self.autoencoder.decode(latents).clamp(-1, 1).cpu())
        return torch.cat(images)


def macs_per_generation(costs: MacTable, num_steps: int, scheduler: str, noise_config: dict,
                        experts: Optional[ExpertSet] = None, guidance: bool = True) -> float:
    """UNet MACs of one generation: sum over the schedule's steps of the (routed)
    expert's kept MACs; classifier-free guidance counts as 2 UNet calls per step."""
    sched = build_sampling_scheduler(scheduler, noise_config)
    sched.set_timesteps(num_steps)
    calls = 2 if guidance else 1
    if experts is None:
        return float(calls * len(sched.timesteps) * costs.total_macs)
    keep = costs.keep_ratio(torch.tensor(experts.masks, dtype=torch.float64))  # (N_E,)
    return float(calls * costs.total_macs *
                 sum(keep[e].item() for e in experts.experts_for(sched.timesteps.tolist())))


def generation_gmacs(costs: Dict[str, MacTable], num_steps: int, scheduler: str,
                     noise_config: dict, experts: Optional[ExpertSet] = None) -> Dict[str, float]:
    """GMACs per guided generation under each MAC convention of ``costs``, as results
    columns: ``gmacs_per_generation`` (fvcore) and ``gmacs_per_generation_<convention>``."""
    return {'gmacs_per_generation' + ('' if c == 'fvcore' else f'_{c}'):
            macs_per_generation(table, num_steps, scheduler, noise_config, experts) / 1e9
            for c, table in costs.items()}
