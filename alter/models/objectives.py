"""Training objectives: how x_t, the model's timestep and the denoising target are drawn.

Contract (``OBJECTIVES``, built with the model's ``noise_scheduler`` keyword arguments):

* ``scheduler`` -- the diffusers training noise scheduler;
* ``draw(draw, latents) -> NoisyBatch`` -- x_t, the training-scale timesteps the
  model is called with (B,) and the target, from the model's seeded, rank-aware
  ``draw(sampler, batch, *shape)``;
* ``denoising_loss(prediction, target)`` -- L_denoise (ALTER_SPEC §5);
* ``grid(timestep_divisor)`` -- the routing table's ``TimestepGrid`` for a model
  that receives the training-scale timestep divided by ``timestep_divisor``.

Output KD compares the student's whole output with the teacher's in every objective.
"""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from alter.inference.grids import DiscreteGrid, SigmaGrid
from alter.models.losses import denoising_target
from alter.registry import OBJECTIVES


@dataclass
class NoisyBatch:
    """x_t (B, C, h, w), timesteps (B,) on the training scale 0..T, target (B, C, h, w)."""

    x_t: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor


class Objective:
    """Base of the objectives (see the module docstring): L_denoise is the MSE to the target."""

    scheduler: object

    def draw(self, draw: Callable, latents: torch.Tensor) -> NoisyBatch:
        raise NotImplementedError

    def denoising_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction.float(), target.float())

    def grid(self, timestep_divisor: float):
        raise NotImplementedError


@OBJECTIVES.register_module()
class DDPMObjective(Objective):
    """A DDPM noise schedule with uniform integer timesteps; the target follows the
    scheduler's ``prediction_type`` (epsilon, v -- SD2.1-768 -- or sample)."""

    def __init__(self, noise_scheduler: dict) -> None:
        self.scheduler = DDPMScheduler(**noise_scheduler)

    def draw(self, draw: Callable, latents: torch.Tensor) -> NoisyBatch:
        num_timesteps = self.scheduler.config.num_train_timesteps
        timesteps = draw(lambda *size, **kw: torch.randint(0, num_timesteps, size, **kw),
                         latents.shape[0]).to(latents.device)
        noise = draw(torch.randn, *latents.shape).to(latents)
        x_t = self.scheduler.add_noise(latents, noise, timesteps)
        return NoisyBatch(x_t, timesteps, denoising_target(self.scheduler, latents, noise,
                                                           timesteps))

    def grid(self, timestep_divisor: float) -> DiscreteGrid:
        return DiscreteGrid(self.scheduler.config.num_train_timesteps)


@OBJECTIVES.register_module()
class LearnedSigmaObjective(DDPMObjective):
    """ADM's epsilon-prediction with a learned variance (DiT, PixArt-alpha).

    The model outputs 2C channels: epsilon, then the log-variance interpolation v
    between beta_t and the posterior variance. L_denoise is the MSE of the epsilon
    half (ADM's L_simple); ADM's variational-bound term, which alone trains v from
    data, is not computed. v is kept by distillation instead: output KD compares
    both halves with the dense teacher's, so the student's variance follows the
    teacher's (the pretrained model's), the whole output weighted alike.
    """

    def __init__(self, noise_scheduler: dict) -> None:
        super().__init__(noise_scheduler)
        if self.scheduler.config.prediction_type != 'epsilon':
            raise ValueError('a learned-variance output predicts epsilon; got '
                             f'prediction_type={self.scheduler.config.prediction_type!r}')

    def denoising_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.shape[1] != 2 * target.shape[1]:
            raise ValueError(f'a learned-variance model outputs 2 x {target.shape[1]} channels '
                             f'(epsilon, variance), got {prediction.shape[1]}; use '
                             'DDPMObjective for a model without a variance output')
        return super().denoising_loss(prediction[:, :target.shape[1]], target)


@OBJECTIVES.register_module()
class FlowMatchingObjective(Objective):
    """Rectified flow (SD3, Flux): x_t = (1 - sigma) x_0 + sigma * noise, target the
    velocity noise - x_0, the model called with t = sigma * T.

    sigma is drawn as diffusers' SD3/Flux training scripts draw it: u from
    ``weighting`` (``logit_normal``: sigmoid of N(logit_mean, logit_std), SD3's
    choice; ``uniform``; ``mode``), then sigma = the scheduler's training sigma at
    index floor(u * T) -- the schedule after the scheduler's ``shift``. The loss is
    unweighted, as there. Routing rows are bins of sigma (``SigmaGrid``).
    """

    def __init__(self, noise_scheduler: dict, weighting: str = 'logit_normal',
                 logit_mean: float = 0.0, logit_std: float = 1.0,
                 mode_scale: float = 1.29) -> None:
        if weighting not in ('logit_normal', 'uniform', 'mode'):
            raise ValueError(f"weighting must be 'logit_normal', 'uniform' or 'mode', got "
                             f'{weighting!r}')
        self.scheduler = FlowMatchEulerDiscreteScheduler(**noise_scheduler)
        self.weighting, self.logit_mean, self.logit_std = weighting, logit_mean, logit_std
        self.mode_scale = mode_scale

    def _density(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return compute_density_for_timestep_sampling(
            self.weighting, batch_size, self.logit_mean, self.logit_std, self.mode_scale,
            generator=generator)

    def draw(self, draw: Callable, latents: torch.Tensor) -> NoisyBatch:
        num_timesteps = self.scheduler.config.num_train_timesteps
        u = draw(lambda size, generator: self._density(size, generator), latents.shape[0])
        index = (u * num_timesteps).long().clamp(max=num_timesteps - 1)  # u = 1.0 in float32
        sigmas = self.scheduler.sigmas[index].to(latents)
        noise = draw(torch.randn, *latents.shape).to(latents)
        s = sigmas.view(-1, *([1] * (latents.dim() - 1)))
        x_t = (1 - s) * latents + s * noise
        return NoisyBatch(x_t, sigmas * num_timesteps, noise - latents)

    def grid(self, timestep_divisor: float) -> SigmaGrid:
        num_timesteps = self.scheduler.config.num_train_timesteps
        return SigmaGrid(num_timesteps, num_timesteps / timestep_divisor)
