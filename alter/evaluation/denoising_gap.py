"""Per-timestep denoising gap: where along the trajectory a student departs from its teacher.

On a fixed held-out set of (x0, noise) pairs and a grid of timesteps, both UNets predict
from the same x_t and context; their predictions are turned into clean-latent estimates
x̂0 and compared (x0 space puts every timestep and prediction type on one scale). The
student runs routed, with its expert's units really skipped (``ExpertRouter``), as at
inference. No sampling is needed, so it shows which timesteps lose quality.
"""
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler

from alter.evaluation.metrics import _PerImageMetric, _field
from alter.inference.routing import ExpertRouter
from alter.models.conditioning import map_context
from alter.registry import METRICS
from alter.units.backbones import Context, backbone_of


def predicted_x0(scheduler: DDPMScheduler, x_t: torch.Tensor, timestep: int,
                 prediction: torch.Tensor) -> torch.Tensor:
    """The clean latents (B, C, h, w) a prediction implies at integer ``timestep``
    (``prediction_type`` epsilon, v_prediction or sample)."""
    alpha_bar = scheduler.alphas_cumprod[timestep].to(x_t)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    kind = scheduler.config.prediction_type
    if kind == 'epsilon':
        return (x_t - s * prediction) / a
    if kind == 'v_prediction':  # v = a eps - s x0  =>  x0 = a x_t - s v
        return a * x_t - s * prediction
    if kind == 'sample':
        return prediction
    raise ValueError(f"unsupported prediction_type {kind!r}; expected 'epsilon', "
                     "'v_prediction' or 'sample'")


@torch.no_grad()
def x0_predictions(unet, scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                   context: Context, timesteps: Sequence[int],
                   router: Optional[ExpertRouter] = None, batch_size: int = 256) -> torch.Tensor:
    """x̂0 of ``unet`` (any supported denoiser) for every timestep of the grid and every pair.

    Args:
        x0, noise: (N, C, h, w) clean latents and their noise (the same for every t).
        context: (N, L, D) text states, or a dict of the denoiser's conditioning.
        timesteps: the grid, integer training timesteps.
        router: routes ``unet`` to the expert of each timestep (hard skipping).
    Returns:
        (len(timesteps), N, C, h, w) float32.
    """
    backbone = backbone_of(unet, 'the denoising gap')
    out = []
    try:
        for t in timesteps:
            if router is not None:
                router.select(t)
            rows = []
            for start in range(0, len(x0), batch_size):
                part = slice(start, start + batch_size)
                t_batch = torch.full((len(x0[part]), ), int(t), dtype=torch.long)
                x_t = scheduler.add_noise(x0[part], noise[part], t_batch)
                prediction = backbone.predict(unet, x_t, t_batch.to(x_t.device),
                                              map_context(lambda c: c[part], context))
                rows.append(predicted_x0(scheduler, x_t, int(t), prediction).float())
            out.append(torch.cat(rows))
    finally:
        if router is not None:
            router.dense()
    return torch.stack(out)


@METRICS.register_module()
class DenoisingGap(_PerImageMetric):
    """Mean squared difference of student and teacher x̂0 per (pair, timestep):
    ``denoising_gap`` over all of them and ``denoising_gap/t<lo>-<hi>`` per band of
    ``band`` timesteps, each with its bootstrap interval over the (pair, timestep)
    records; ``per_image`` holds the (N * len(grid),) values and
    ``denoising_gap/timestep``.

    Data samples: dicts with ``student_x0`` and ``teacher_x0`` (C, h, w) and
    ``timestep`` (int).
    """

    def __init__(self, band: int = 250, num_timesteps: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.band, self.num_timesteps = band, num_timesteps

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        student = torch.stack([torch.as_tensor(x) for x in _field(data_samples, 'student_x0')])
        teacher = torch.stack([torch.as_tensor(x) for x in _field(data_samples, 'teacher_x0')])
        gaps = (student.double() - teacher.double()).pow(2).flatten(1).mean(1)
        self.results.extend(zip(_field(data_samples, 'timestep'), gaps.tolist()))

    def per_image_scores(self, results: list) -> Dict[str, np.ndarray]:
        timesteps = np.array([t for t, _ in results], dtype=np.int64)
        gaps = np.array([g for _, g in results], dtype=np.float64)
        scores = {'denoising_gap': gaps}
        for low in range(0, self.num_timesteps, self.band):
            high = min(low + self.band, self.num_timesteps) - 1
            scores[f'denoising_gap/t{low:03d}-{high:03d}'] = np.where(
                (timesteps >= low) & (timesteps <= high), gaps, np.nan)
        return scores

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        self.per_image['denoising_gap/timestep'] = np.array([t for t, _ in results],
                                                            dtype=np.float64)
        return metrics
