"""One line to run a diffusers pipeline with ALTER's routed experts.

    routed = apply_experts(pipe, 'checkpoints/my_alter')   # StableDiffusionPipeline & co.
    image = pipe(prompt, num_inference_steps=20).images[0]
    routed.remove()                                         # the dense pipeline again

The routing is installed on the pipeline's denoiser: ``pipe.unet`` (Stable
Diffusion 1.x/2.x, SDXL) or ``pipe.transformer`` (DiT, PixArt-alpha, SD3, Flux).
Every call runs the expert of the timestep value it receives
(``TimestepRouting``, looked up on the experts' timestep grid), so
text-to-image, img2img and inpainting at any strength, ControlNet, SDXL
base/refiner splits, callbacks, pipelines sharing one model and deep copies of
a routed model all get the right expert. Reading the received timestep costs
one host sync per call.

Once per generation (when the pipeline opens its progress bar, before its
first denoiser call) the pipeline is checked: its denoiser must still be routed
by these experts and ``pipe.scheduler`` must hand it timesteps of the experts'
grid.
"""
from pathlib import Path
from typing import Union

from alter.inference.experts import ExpertSet, load_experts
from alter.inference.routing import (ExpertRouter, TimestepRouting, check_weights,
                                     timestep_routing, uncompiled)
from alter.units.backbones import denoiser_folders


def check_scheduler(scheduler, experts: ExpertSet) -> None:
    """Raise unless ``scheduler`` gives the model timesteps of the experts' grid: training
    timesteps of a DDPM schedule (UNets, DiT, PixArt) or flow-matching sigmas (SD3,
    Flux); see ``alter.inference.grids``."""
    experts.grid.check_scheduler(scheduler)


def denoiser_attribute(pipe) -> str:
    """The attribute of ``pipe`` holding its denoiser: ``unet`` or ``transformer``."""
    found = [name for name in denoiser_folders() if getattr(pipe, name, None) is not None]
    if len(found) != 1 or not hasattr(pipe, 'scheduler'):
        raise TypeError(f'{type(pipe).__name__} has {found or "no denoiser"} among '
                        f'{denoiser_folders()} and {"a" if hasattr(pipe, "scheduler") else "no"} '
                        'scheduler; apply_experts needs a diffusers pipeline with one denoiser '
                        'and a scheduler, such as StableDiffusionPipeline or DiTPipeline')
    return found[0]


class RoutedPipeline:
    """Routing installed on the pipeline's denoiser; ``remove()`` takes it off again.

    The denoiser may be a ``torch.compile`` wrapper: the model inside it is routed.
    """

    def __init__(self, pipe, experts: ExpertSet, allow_other_weights: bool = False) -> None:
        self.attribute = denoiser_attribute(pipe)
        check_scheduler(pipe.scheduler, experts)
        self.pipe, self.experts = pipe, experts
        self.unet = uncompiled(getattr(pipe, self.attribute))
        routing = timestep_routing(self.unet)
        if routing is None:
            routing = TimestepRouting(ExpertRouter(self.unet, experts, allow_other_weights))
        elif routing.experts != experts:
            raise RuntimeError(f'pipe.{self.attribute} is already routed by other experts; '
                               'remove() that routing first')
        elif not allow_other_weights:  # shared with another routed pipeline
            check_weights(self.unet, experts)
        self._saved_progress_bar = pipe.__dict__.get('progress_bar')
        self._progress_bar = pipe.progress_bar
        pipe.progress_bar = self._check_then_progress_bar

    def _check_then_progress_bar(self, *args, **kwargs):
        # Pipelines open their progress bar once per generation, before the first model call.
        self.check()
        return self._progress_bar(*args, **kwargs)

    def check(self) -> None:
        """Raise if the pipeline's denoiser is no longer routed by these experts (replaced or
        removed) or ``pipe.scheduler`` does not give timesteps of their grid."""
        routing = timestep_routing(getattr(self.pipe, self.attribute))
        if routing is None or routing.experts != self.experts:
            raise RuntimeError(
                f'pipe.{self.attribute} was replaced after apply_experts (or its routing '
                'removed), so this generation would not run the experts. Route the new model: '
                'routed.remove(), then apply_experts(pipe, CHECKPOINT)')
        check_scheduler(self.pipe.scheduler, self.experts)

    def remove(self) -> None:
        """Remove the routing from the pipeline's denoiser (and from the model it was applied
        to, if the denoiser has been replaced since): the pipeline is dense again."""
        for model in (getattr(self.pipe, self.attribute), self.unet):
            routing = timestep_routing(model)
            if routing is not None:
                routing.remove()
                routing.router.remove()
        if self._saved_progress_bar is None:
            del self.pipe.progress_bar  # the pipeline's own method again
        else:
            self.pipe.progress_bar = self._saved_progress_bar


def apply_experts(pipe, checkpoint: Union[str, Path, ExpertSet],
                  allow_other_weights: bool = False) -> RoutedPipeline:
    """Route ``pipe``'s denoiser (``pipe.unet`` or ``pipe.transformer``) through the experts
    of an ALTER checkpoint (or ExpertSet).

    The denoiser must hold the checkpoint's architecture and weights
    (``load_unet``); mismatches raise instead of silently running dense or
    other weights. ``allow_other_weights=True`` skips the weights check.
    """
    experts = checkpoint if isinstance(checkpoint, ExpertSet) else load_experts(checkpoint)
    return RoutedPipeline(pipe, experts, allow_other_weights)
