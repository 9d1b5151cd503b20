"""One line to run a diffusers text-to-image pipeline with ALTER's routed experts.

    routed = apply_experts(pipe, 'checkpoints/my_alter')   # StableDiffusionPipeline & co.
    image = pipe(prompt, num_inference_steps=20).images[0]
    routed.remove()                                         # the dense pipeline again

Works with any scheduler and step count: the expert of each UNet call is
looked up from the timestep on the host. Pipelines pass the step's timestep
as a device tensor; reading it would sync the device every step, so the
schedule is copied to the host once per generation (when the scheduler's
``timesteps`` tensor changes) and the n-th UNet call of a generation uses
its n-th entry. Classifier-free guidance halves share the call, hence the
expert.
"""
from pathlib import Path
from typing import List, Optional, Union

import torch

from alter.inference.experts import ExpertSet, load_experts
from alter.inference.routing import ExpertRouter


class RoutedPipeline:
    """Routing installed on ``pipe.unet``; ``remove()`` takes it off again."""

    def __init__(self, pipe, experts: ExpertSet) -> None:
        if not hasattr(pipe, 'unet') or not hasattr(pipe, 'scheduler'):
            raise TypeError(f'{type(pipe).__name__} has no unet/scheduler; apply_experts needs a '
                            'diffusers UNet pipeline such as StableDiffusionPipeline')
        self.pipe = pipe
        self.router = ExpertRouter(pipe.unet, experts)
        self._schedule: Optional[torch.Tensor] = None
        self._host: List[float] = []
        self._calls = 0
        self._hook = pipe.unet.register_forward_pre_hook(self._route, with_kwargs=True)

    def _timestep(self, timestep) -> float:
        if isinstance(timestep, (int, float)):
            return float(timestep)
        # Device tensors (CPU ones too, so one path serves and is tested everywhere).
        schedule = self.pipe.scheduler.timesteps
        if schedule is not self._schedule:  # a new generation: one host copy
            self._schedule, self._host, self._calls = schedule, schedule.tolist(), 0
        if self._calls >= len(self._host):
            raise RuntimeError(f'UNet call {self._calls + 1} of a {len(self._host)}-step schedule: '
                               'the pipeline calls the UNet more often than its scheduler has '
                               'timesteps, so the routed expert cannot be looked up on the host')
        return self._host[self._calls]

    def _route(self, module, args, kwargs) -> None:
        timestep = args[1] if len(args) > 1 else kwargs['timestep']
        self.router.select(self._timestep(timestep))
        self._calls += 1

    def remove(self) -> None:
        """Remove the routing: the pipeline's UNet is dense again."""
        self._hook.remove()
        self.router.remove()


def apply_experts(pipe, checkpoint: Union[str, Path, ExpertSet]) -> RoutedPipeline:
    """Route ``pipe``'s UNet through the experts of an ALTER checkpoint (or ExpertSet).

    The pipeline's UNet must hold the checkpoint's weights (``load_unet``) and
    architecture; mismatches raise instead of silently running dense.
    """
    experts = checkpoint if isinstance(checkpoint, ExpertSet) else load_experts(checkpoint)
    return RoutedPipeline(pipe, experts)
