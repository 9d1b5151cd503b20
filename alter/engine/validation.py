"""Validation during training: images generated for a few prompts, scored by the metrics.

Configs switch it on with the three settings mmengine reads (all or none)::

    train_cfg = dict(type='IterBasedTrainLoop', max_iters=..., val_interval=500)
    val_cfg = dict(type='GenerationValLoop', num_steps=20, guidance_scale=3.0, scheduler='ddim')
    val_dataloader = dict(batch_size=32, dataset=dict(type='GenerationPrompts', num_prompts=32),
                          sampler=dict(type='DefaultSampler', shuffle=False),
                          collate_fn=dict(type='alter.prompt_collate'))
    val_evaluator = [dict(type='AttributeAccuracy'), dict(type='AlignmentScore')]

The model's ``val_step`` generates each prompt's image as the model would be
deployed (ALTER: the routed experts of the current table, units really skipped)
through the shared sampler; the metrics are ``METRICS`` of ``alter.evaluation``.
Results go to the visualizer beside the losses (``vis_data/scalars.json`` lines whose
``step`` is the iteration they were measured at; TensorBoard or W&B when configured).
Turn it off with ``--cfg-options val_cfg=None val_dataloader=None val_evaluator=None``.
"""
from typing import Sequence

from mmengine.runner import ValLoop

from alter.models.alter import bare
from alter.registry import LOOPS
from alter.utils.cli import InputError

OFF = '--cfg-options val_cfg=None val_dataloader=None val_evaluator=None'


@LOOPS.register_module()
class GenerationValLoop(ValLoop):
    """mmengine's ``ValLoop``, handing the model each batch of prompts together with
    the sampling settings: ``model.val_step(dict(samples=batch, sampling=...))``.

    Args:
        num_steps: sampling steps per image.
        guidance_scale: classifier-free guidance (1: none).
        scheduler: sampling scheduler (``alter.inference.sampler.SCHEDULERS``).
        runner, dataloader, evaluator, fp16: as ``ValLoop``'s.
    """

    def __init__(self, runner, dataloader, evaluator, num_steps: int = 20,
                 guidance_scale: float = 3.0, scheduler: str = 'ddim', fp16: bool = False) -> None:
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f'val_cfg.num_steps must be a positive int, got {num_steps!r}')
        model = bare(runner.model)
        missing = [name for name in ('autoencoder', 'text_encoder')
                   if getattr(model, name, None) is None]
        if missing:  # refused before training, not after it
            raise InputError(f'validation generates images from prompts, which needs '
                             f'model.{" and model.".join(missing)}; this config has none (a '
                             f'latent-cache run?). Set them, or turn validation off: {OFF}')
        super().__init__(runner, dataloader, evaluator, fp16)
        self.sampling = dict(num_steps=num_steps, guidance_scale=guidance_scale,
                             scheduler=scheduler)

    def run_iter(self, idx: int, data_batch: Sequence[dict]) -> None:
        super().run_iter(idx, dict(samples=data_batch, sampling=self.sampling))
