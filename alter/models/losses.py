"""The UNet objective of ALTER (ALTER_SPEC §5): denoising, output KD, feature KD.

``L_U = w_denoise * L_denoise + w_out_kd * L_outKD + w_feat_kd * L_featKD``; the
hypernetwork step uses the same objective as its ``L_perf``.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel


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


def block_modules(unet: UNet2DConditionModel) -> List[torch.nn.Module]:
    """The 9 blocks whose outputs feature KD matches on SD-style UNets: down, mid, up."""
    return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]


@contextmanager
def capture_block_outputs(unet: UNet2DConditionModel) -> Iterator[List[torch.Tensor]]:
    """Collect each block's hidden-state output, in execution order, during a forward."""
    features: List[torch.Tensor] = []

    def hook(module, args, output):
        # Down blocks return (hidden_states, skip tensors); keep the hidden state.
        features.append(output[0] if isinstance(output, tuple) else output)

    handles = [m.register_forward_hook(hook) for m in block_modules(unet)]
    try:
        yield features
    finally:
        for h in handles:
            h.remove()


def unet_objective(prediction: torch.Tensor, target: torch.Tensor,
                   teacher_prediction: torch.Tensor, features: List[torch.Tensor],
                   teacher_features: List[torch.Tensor],
                   weights: Dict[str, float]) -> Dict[str, torch.Tensor]:
    """Weighted terms of L_U, keyed ``loss_denoise``, ``loss_out_kd``, ``loss_feat_kd``.

    Args:
        prediction, target, teacher_prediction: (B, C, h, w).
        features, teacher_features: the 9 block outputs of student and teacher.
        weights: ``denoise``, ``out_kd``, ``feat_kd``.
    """
    feat_kd = torch.stack([F.mse_loss(s.float(), t.float())
                           for s, t in zip(features, teacher_features)]).mean()
    return dict(
        loss_denoise=weights['denoise'] * F.mse_loss(prediction.float(), target.float()),
        loss_out_kd=weights['out_kd'] * F.mse_loss(prediction.float(), teacher_prediction.float()),
        loss_feat_kd=weights['feat_kd'] * feat_kd)
