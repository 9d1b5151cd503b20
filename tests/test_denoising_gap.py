"""The per-timestep denoising gap against direct computations on the tiny UNet."""
import copy

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

import alter.evaluation  # noqa: F401  (registers the metrics)
from alter.evaluation.denoising_gap import predicted_x0, x0_predictions
from alter.inference.routing import ExpertRouter
from alter.models.losses import denoising_target
from alter.registry import METRICS, PRUNING_SPACES
from alter.units.gating import UnitGating

from .test_inference import random_experts


class SoftRouted(torch.nn.Module):
    """The oracle: the same routing as soft gates, every unit computed and blended."""

    def __init__(self, unet, experts):
        super().__init__()
        self.unet, self.experts = unet, experts
        self.gating = UnitGating(PRUNING_SPACES.build(dict(type=experts.space)).find(unet))
        self.config = unet.config

    def forward(self, x, t, context):
        mask = torch.tensor(self.experts.masks[self.experts.expert_at(float(t))],
                            dtype=torch.float32)
        with self.gating.soft(mask.expand(x.shape[0], -1)):
            return self.unet(x, t, context)


@pytest.mark.parametrize('prediction_type', ['epsilon', 'v_prediction', 'sample'])
def test_predicted_x0_inverts_the_training_target(prediction_type):
    scheduler = DDPMScheduler(beta_schedule='squaredcos_cap_v2', prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    for t in (0, 10, 500, 999):
        timesteps = torch.full((4, ), t)
        x_t = scheduler.add_noise(x0, noise, timesteps)
        target = denoising_target(scheduler, x0, noise, timesteps)
        # Near t = 999 epsilon-prediction divides by sqrt(alpha_bar) ~ 0.006.
        tolerance = 1e-2 if prediction_type == 'epsilon' and t == 999 else 1e-4
        torch.testing.assert_close(predicted_x0(scheduler, x_t, t, target), x0,
                                   atol=tolerance, rtol=0)


def _gap(student_x0, teacher_x0, grid):
    metric = METRICS.build(dict(type='DenoisingGap', band=500))
    metric.process(None, [dict(student_x0=s, teacher_x0=t, timestep=grid[i])
                          for i in range(len(grid)) for s, t in zip(student_x0[i], teacher_x0[i])])
    return metric, metric.evaluate(len(grid) * student_x0.shape[1])


def test_denoising_gap_of_a_routed_student(tiny_unet):
    scheduler = DDPMScheduler(beta_schedule='squaredcos_cap_v2', prediction_type='v_prediction')
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 12, 16, 16, generator=g), torch.randn(3, 12, 16, 16, generator=g)
    context = torch.randn(3, 8, 32, generator=g)
    grid = [5, 300, 700, 990]
    teacher = copy.deepcopy(tiny_unet)
    experts = random_experts(tiny_unet)
    router = ExpertRouter(tiny_unet, experts)
    student_x0 = x0_predictions(tiny_unet, scheduler, x0, noise, context, grid, router,
                                batch_size=2)
    teacher_x0 = x0_predictions(teacher, scheduler, x0, noise, context, grid)
    assert student_x0.shape == (4, 3, 12, 16, 16)
    assert router.current is None  # dense again afterwards

    # Direct: the soft-gated oracle of the same experts, and the x0 formula by hand.
    oracle = SoftRouted(copy.deepcopy(teacher), experts)
    expected = []
    for i, t in enumerate(grid):
        t_batch = torch.full((3, ), t)
        x_t = scheduler.add_noise(x0, noise, t_batch)
        with torch.no_grad():
            v = oracle(x_t, t, context).sample
        a = scheduler.alphas_cumprod[t].sqrt()
        direct = a * x_t - (1 - a ** 2).sqrt() * v
        torch.testing.assert_close(student_x0[i], direct, atol=1e-4, rtol=1e-4)
        expected.append((direct.double() - teacher_x0[i].double()).pow(2).flatten(1).mean(1))
    expected = torch.stack(expected)  # (4 timesteps, 3 pairs)

    metric, result = _gap(student_x0, teacher_x0, grid)
    assert result['denoising_gap'] == pytest.approx(expected.mean().item(), rel=1e-4)
    assert result['denoising_gap/t000-499'] == pytest.approx(expected[:2].mean().item(), rel=1e-4)
    assert result['denoising_gap/t500-999'] == pytest.approx(expected[2:].mean().item(), rel=1e-4)
    assert result['denoising_gap'] > 0
    assert result['denoising_gap_ci_low'] <= result['denoising_gap'] \
        <= result['denoising_gap_ci_high']
    np.testing.assert_array_equal(metric.per_image['denoising_gap/timestep'],
                                  np.repeat(grid, 3))

    # The teacher against itself: no gap.
    _, same = _gap(teacher_x0, teacher_x0, grid)
    assert same['denoising_gap'] == 0
