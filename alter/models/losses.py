"""The student objective of ALTER (ALTER_SPEC §5): denoising, output KD, feature KD.

``L_U = w_denoise * L_denoise + w_out_kd * L_outKD + w_feat_kd * L_featKD``; the
hypernetwork step uses the same objective as its ``L_perf``.
"""
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from alter.units.backbones import backbone_of


def denoising_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts, read from the scheduler config's ``prediction_type``.

    Shapes: latents, noise (B, C, h, w); timesteps (B,) -> (B, C, h, w).
    """
    kind = scheduler.config.prediction_type
    if kind == 'epsilon':
        return noise
    if kind == 'v_prediction':  # SD2.1-768
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == 'sample':
        return latents
    raise ValueError(f"unsupported prediction_type {kind!r}; expected 'epsilon', "
                     "'v_prediction' or 'sample'")


@contextmanager
def capture_block_outputs(model: nn.Module) -> Iterator[List[torch.Tensor]]:
    """Collect the hidden states feature KD matches, in execution order, during a forward.

    Which blocks is the backbone's choice: on SD-style UNets the 9 blocks (down,
    mid, up), on transformers the image stream after the middle block.
    """
    backbone = backbone_of(model, 'feature KD')
    features: List[torch.Tensor] = []

    def hook(module, args, output):
        features.append(backbone.feature_output(output))

    handles = [m.register_forward_hook(hook) for m in backbone.feature_modules(model)]
    try:
        yield features
    finally:
        for h in handles:
            h.remove()


def unet_objective(prediction: torch.Tensor, target: torch.Tensor,
                   teacher_prediction: torch.Tensor, features: List[torch.Tensor],
                   teacher_features: List[torch.Tensor], weights: Dict[str, float],
                   denoising_loss: Callable) -> Dict[str, torch.Tensor]:
    """Weighted terms of L_U, keyed ``loss_denoise``, ``loss_out_kd``, ``loss_feat_kd``.

    Args:
        prediction, teacher_prediction: (B, C', h, w) model outputs.
        target: (B, C, h, w) denoising target.
        features, teacher_features: the block outputs of student and teacher
            (``capture_block_outputs``).
        weights: ``denoise``, ``out_kd``, ``feat_kd``.
        denoising_loss: the objective's L_denoise, ``(prediction, target) -> scalar``.
    """
    feat_kd = torch.stack([F.mse_loss(s.float(), t.float())
                           for s, t in zip(features, teacher_features)]).mean()
    return dict(
        loss_denoise=weights['denoise'] * denoising_loss(prediction, target),
        loss_out_kd=weights['out_kd'] * F.mse_loss(prediction.float(), teacher_prediction.float()),
        loss_feat_kd=weights['feat_kd'] * feat_kd)
