"""One line to run a diffusers UNet pipeline with ALTER's routed experts.

    routed = apply_experts(pipe, 'checkpoints/my_alter')   # StableDiffusionPipeline & co.
    image = pipe(prompt, num_inference_steps=20).images[0]
    routed.remove()                                         # the dense pipeline again

Every UNet call runs the expert of the timestep value it receives
(``TimestepRouting``), so text-to-image, img2img and inpainting at any
strength, ControlNet, SDXL base/refiner splits, callbacks, pipelines sharing
one UNet and deep copies of a routed UNet all get the right expert. Reading
the received timestep costs one host sync per UNet call.

Once per generation (when the pipeline opens its progress bar, before its
first UNet call) the pipeline is checked: ``pipe.unet`` must still be routed
by these experts and ``pipe.scheduler`` must hand the UNet training
timesteps.
"""
from pathlib import Path
from typing import Union

from alter.inference.experts import ExpertSet, load_experts
from alter.inference.routing import (ExpertRouter, TimestepRouting, check_weights,
                                     timestep_routing, uncompiled)


def check_scheduler(scheduler, experts: ExpertSet) -> None:
    """Raise unless ``scheduler`` gives the UNet timesteps of the experts' training grid.

    The routing table is indexed by the discrete training timesteps 0..T-1 of a
    DDPM noise schedule. Schedulers that hand the UNet something else are
    refused: EDM-style ones (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``,
    ``timestep_type='continuous'``) pass ``log(sigma) / 4``, flow-matching ones
    (``FlowMatch*``, ``use_flow_sigmas=True``) pass ``sigma * T``: neither is a
    training timestep of these experts (nor of the UNet they were trained on).
    """
    config = scheduler.config
    name = type(scheduler).__name__
    if not hasattr(scheduler, 'alphas_cumprod'):
        raise ValueError(f'{name} defines no discrete noise schedule (alphas_cumprod over '
                         'training timesteps): its UNet timesteps are continuous noise levels, '
                         'not the training timesteps the experts are routed by. Use a '
                         'discrete-time scheduler such as DDIM, PNDM, DPM-Solver++, Euler or UniPC')
    if config.get('timestep_type') == 'continuous':
        raise ValueError(f"{name} with timestep_type='continuous' passes the UNet log(sigma)/4 "
                         "(EDM), not a training timestep; use timestep_type='discrete'")
    if config.get('use_flow_sigmas') or config.get('prediction_type') == 'flow_prediction':
        raise ValueError(f'{name} with flow-matching sigmas passes the UNet sigma * T, not a '
                         'training timestep of the DDPM schedule the experts were trained on; '
                         'use use_flow_sigmas=False')
    if config.get('num_train_timesteps') != len(experts.route):
        raise ValueError(f'{name} has {config.get("num_train_timesteps")} training timesteps, '
                         f'the routing table {len(experts.route)}; use the training schedule\'s')


class RoutedPipeline:
    """Routing installed on ``pipe.unet``; ``remove()`` takes it off again.

    ``pipe.unet`` may be a ``torch.compile`` wrapper: the UNet inside it is routed.
    """

    def __init__(self, pipe, experts: ExpertSet, allow_other_weights: bool = False) -> None:
        if not hasattr(pipe, 'unet') or not hasattr(pipe, 'scheduler'):
            raise TypeError(f'{type(pipe).__name__} has no unet/scheduler; apply_experts needs a '
                            'diffusers UNet pipeline such as StableDiffusionPipeline')
        check_scheduler(pipe.scheduler, experts)
        self.pipe, self.experts = pipe, experts
        self.unet = uncompiled(pipe.unet)
        routing = timestep_routing(self.unet)
        if routing is None:
            routing = TimestepRouting(ExpertRouter(self.unet, experts, allow_other_weights))
        elif routing.experts != experts:
            raise RuntimeError('pipe.unet is already routed by other experts; remove() that '
                               'routing first')
        elif not allow_other_weights:  # shared with another routed pipeline
            check_weights(self.unet, experts)
        self._saved_progress_bar = pipe.__dict__.get('progress_bar')
        self._progress_bar = pipe.progress_bar
        pipe.progress_bar = self._check_then_progress_bar

    def _check_then_progress_bar(self, *args, **kwargs):
        # Pipelines open their progress bar once per generation, before the first UNet call.
        self.check()
        return self._progress_bar(*args, **kwargs)

    def check(self) -> None:
        """Raise if ``pipe.unet`` is no longer routed by these experts (replaced or removed)
        or ``pipe.scheduler`` does not give training timesteps."""
        routing = timestep_routing(self.pipe.unet)
        if routing is None or routing.experts != self.experts:
            raise RuntimeError(
                'pipe.unet was replaced after apply_experts (or its routing removed), so this '
                'generation would not run the experts. Route the new UNet: routed.remove(), then '
                'apply_experts(pipe, CHECKPOINT)')
        check_scheduler(self.pipe.scheduler, self.experts)

    def remove(self) -> None:
        """Remove the routing from ``pipe.unet`` (and from the UNet it was applied to, if
        ``pipe.unet`` has been replaced since): the pipeline is dense again."""
        for unet in (self.pipe.unet, self.unet):
            routing = timestep_routing(unet)
            if routing is not None:
                routing.remove()
                routing.router.remove()
        if self._saved_progress_bar is None:
            del self.pipe.progress_bar  # the pipeline's own method again
        else:
            self.pipe.progress_bar = self._saved_progress_bar


def apply_experts(pipe, checkpoint: Union[str, Path, ExpertSet],
                  allow_other_weights: bool = False) -> RoutedPipeline:
    """Route ``pipe``'s UNet through the experts of an ALTER checkpoint (or ExpertSet).

    The pipeline's UNet must hold the checkpoint's architecture and weights
    (``load_unet``); mismatches raise instead of silently running dense or
    other weights. ``allow_other_weights=True`` skips the weights check.
    """
    experts = checkpoint if isinstance(checkpoint, ExpertSet) else load_experts(checkpoint)
    return RoutedPipeline(pipe, experts, allow_other_weights)
