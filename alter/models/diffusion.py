"""Latent diffusion training: a UNet, its noise scheduler and frozen conditioning.

``LatentDiffusion`` trains the UNet densely (the teacher of the embedded
benchmark, any plain fine-tune); ``ALTER`` builds on it. Both draw timesteps,
noise and caption dropout from the model's own generator, re-seeded from
(seed, step) every step, so a resumed run draws exactly what an uninterrupted
one would. Draws are made for the *global* batch and each rank keeps its
samples (rank r holds global positions r, r + W, ... as mmengine's samplers
deal them out), so N ranks train exactly like one process with the global
batch, up to float summation order.
"""
import inspect
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from mmengine.dist import all_reduce_dict, get_rank, get_world_size
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from torch import nn

from alter.models.losses import denoising_target
from alter.registry import MODELS

FROZEN = ('teacher', 'autoencoder', 'text_encoder')


@MODELS.register_module()
class LatentDiffusion(BaseModel):
    """Plain (dense) diffusion training of a UNet.

    Args:
        unet: config of the backbone (e.g. ``DiffusersUNet``).
        noise_scheduler: ``DDPMScheduler`` keyword arguments; the training
            target follows its ``prediction_type`` (epsilon, v or sample).
        autoencoder, text_encoder: frozen conditioning components (see
            ``alter.models.conditioning``) for batches of ``image`` and
            ``caption``; batches that carry ``latents`` / ``context`` need none.
        cond_dropout: probability of training a sample on the empty caption,
            which classifier-free guidance needs at sampling time.
        pretrained: a local diffusers pipeline folder; the default
            ``pretrained`` of every component config that takes one.
        resolution, latent_scale, context_length: image size in pixels,
            autoencoder downsampling and text tokens of the training data.
        frozen_dtype: dtype of the frozen parts (``float16``/``bfloat16`` halve
            their memory on GPUs; None keeps float32).
        gradient_checkpointing: recompute the UNet's resnet/transformer
            activations in backward instead of storing them.
        seed: seed of the model's own generator.
    """

    def __init__(self,
                 unet: dict,
                 noise_scheduler: dict,
                 autoencoder: Optional[dict] = None,
                 text_encoder: Optional[dict] = None,
                 cond_dropout: float = 0.0,
                 pretrained: Optional[str] = None,
                 resolution: int = 512,
                 latent_scale: int = 8,
                 context_length: int = 77,
                 frozen_dtype: Optional[str] = None,
                 gradient_checkpointing: bool = False,
                 seed: int = 0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not 0 <= cond_dropout < 1:
            raise ValueError(f'cond_dropout must lie in [0, 1), got {cond_dropout}')
        if resolution % latent_scale:
            raise ValueError(f'resolution {resolution} px is not a multiple of latent_scale '
                             f'{latent_scale}')
        self.cond_dropout = cond_dropout
        self.pretrained = pretrained
        self.resolution, self.latent_scale = resolution, latent_scale
        self.context_length = context_length
        self.seed = seed
        self.rng = torch.Generator()

        self.frozen_dtype = getattr(torch, frozen_dtype) if frozen_dtype else torch.float32
        self.unet = self.build_component(unet)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.scheduler = DDPMScheduler(**noise_scheduler)
        self.autoencoder = self._freeze(self.build_component(autoencoder))
        self.text_encoder = self._freeze(self.build_component(text_encoder))
        self._check_conditioning()
        self.register_buffer('num_steps', torch.zeros((), dtype=torch.long))
        # Frozen parts are rebuilt from their sources, never saved.
        self.register_state_dict_post_hook(_drop_frozen_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_frozen_keys)

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_config(cls, model_cfg: dict, **overrides) -> 'LatentDiffusion':
        """The dense model of any model config (also an ``ALTER`` one): its UNet, noise
        schedule and frozen conditioning, leaving out the keys of other model types."""
        known = inspect.signature(LatentDiffusion.__init__).parameters
        kwargs = {k: v for k, v in model_cfg.items() if k in known and k != 'self'}
        return LatentDiffusion(**dict(kwargs, **overrides))

    def build_component(self, cfg: Optional[dict]) -> Optional[nn.Module]:
        """Build a component config, defaulting its ``pretrained`` to the model's."""
        if cfg is None:
            return None
        builder = MODELS.get(cfg['type']) if isinstance(cfg['type'], str) else cfg['type']
        if self.pretrained is not None and 'pretrained' in inspect.signature(builder).parameters:
            cfg = dict(cfg, pretrained=cfg.get('pretrained') or self.pretrained)
        return MODELS.build(cfg)

    def _freeze(self, module: Optional[nn.Module]) -> Optional[nn.Module]:
        if module is None:
            return None
        return module.requires_grad_(False).eval().to(self.frozen_dtype)

    def train(self, mode: bool = True) -> 'LatentDiffusion':
        super().train(mode)
        for name in FROZEN:
            if getattr(self, name, None) is not None:
                getattr(self, name).eval()  # frozen parts stay in eval mode
        return self

    def _check_conditioning(self) -> None:
        """Latent and context sizes the config declares must be what the parts produce."""
        if self.autoencoder is not None and self.autoencoder.scale_factor != self.latent_scale:
            raise ValueError(f'model.latent_scale={self.latent_scale} but the autoencoder '
                             f'downsamples by {self.autoencoder.scale_factor}; make them agree')
        if self.text_encoder is not None:
            if self.text_encoder.context_length != self.context_length:
                raise ValueError(f'model.context_length={self.context_length} but the text '
                                 f'encoder gives {self.text_encoder.context_length} tokens')
            if self.text_encoder.dim != self.unet.config.cross_attention_dim:
                raise ValueError(f'the text encoder gives {self.text_encoder.dim}-d states but '
                                 'the UNet cross-attends to '
                                 f'{self.unet.config.cross_attention_dim}-d ones')

    # -- data ------------------------------------------------------------------

    def start_step(self, data: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """Re-seed the generator for this step; latents and context of the batch."""
        self.rng.manual_seed(hash((self.seed, int(self.num_steps))) & 0xFFFFFFFFFFFF)
        return self.encode(self.data_preprocessor(data, True))

    def draw(self, sampler, batch_size: int, *shape, **kwargs) -> torch.Tensor:
        """``sampler(global_batch, *shape, generator=rng)``; this rank's rows (batch_size, *shape)."""
        world = get_world_size()
        values = sampler(*((batch_size * world, ) + shape), generator=self.rng, **kwargs)
        return values[get_rank()::world]

    @torch.no_grad()
    def encode(self, data: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, C, h, w) and context (B, L, D) of a batch.

        Takes ``latents``/``context`` as given, or encodes ``image``/``caption``
        with the frozen components; captions are dropped to '' with
        probability ``cond_dropout`` (precomputed context: replaced by the batch's
        ``uncond_context``, the encoding of '', with the same draws). The context
        is drawn first, so cached and encoded batches drop the same captions.
        """
        context = self._context(data)
        latents = self._latents(data)
        return latents, context.to(latents)

    def _context(self, data: dict) -> torch.Tensor:
        if 'context' in data:
            context = data['context']
            if self.cond_dropout == 0:
                return context
            if 'uncond_context' not in data:
                raise KeyError(f"model.cond_dropout={self.cond_dropout} needs 'uncond_context' "
                               'beside precomputed context (LatentCacheDataset gives it); or '
                               'set model.cond_dropout=0')
            drop = self.draw(torch.rand, len(context)) < self.cond_dropout
            return torch.where(drop.view(-1, 1, 1).to(context.device),
                               data['uncond_context'].to(context), context)
        if self.text_encoder is None or 'caption' not in data:
            raise KeyError("the batch has no 'context', and no 'caption' with "
                           f'model.text_encoder set to encode it; batch keys: {sorted(data)}')
        drop = self.draw(torch.rand, len(data['caption'])) < self.cond_dropout
        captions = ['' if d else c for c, d in zip(data['caption'], drop.tolist())]
        return self.text_encoder(captions)

    def _latents(self, data: dict) -> torch.Tensor:
        if 'latents' in data:
            return data['latents']
        if self.autoencoder is None or 'image' not in data:
            raise KeyError("the batch has no 'latents', and no 'image' with model.autoencoder "
                           f'set to encode it; batch keys: {sorted(data)}')
        images = data['image']
        f = self.autoencoder.scale_factor
        # The posterior sample's noise comes from the step's draws: a resumed run, and
        # N ranks, draw what one uninterrupted process would.
        noise = self.draw(torch.randn, len(images), self.autoencoder.latent_channels,
                          images.shape[-2] // f, images.shape[-1] // f).to(images)
        return self.autoencoder.encode(images, noise).float()

    def noisy_input(self, latents: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """x_t, timesteps (B,) and the denoising target for clean ``latents``."""
        num_timesteps = self.scheduler.config.num_train_timesteps
        timesteps = self.draw(lambda *size, **kw: torch.randint(0, num_timesteps, size, **kw),
                              latents.shape[0]).to(latents.device)
        noise = self.draw(torch.randn, *latents.shape).to(latents)
        x_t = self.scheduler.add_noise(latents, noise, timesteps)
        return x_t, timesteps, denoising_target(self.scheduler, latents, noise, timesteps)

    # -- training --------------------------------------------------------------

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> Dict[str, torch.Tensor]:
        """One denoising step of the UNet (``optim_wrapper['unet']``)."""
        latents, context = self.start_step(data)
        x_t, timesteps, target = self.noisy_input(latents)
        wrapper = optim_wrapper['unet']
        with wrapper.optim_context(self.unet):
            prediction = self.unet(x_t, timesteps, context).sample
            loss = F.mse_loss(prediction.float(), target.float())
        wrapper.update_params(loss)
        self.num_steps += 1
        log = {'loss_denoise': loss.detach()}
        all_reduce_dict(log, 'mean')  # in place: log the global batch's value
        return log

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                mode: str = 'tensor') -> torch.Tensor:
        """The UNet's prediction; shapes as the UNet's."""
        if mode != 'tensor':
            raise ValueError(f"{type(self).__name__}.forward supports mode='tensor' only, got "
                             f'{mode!r}; training runs through train_step')
        return self.unet(latents, timesteps, context).sample


def _is_frozen_key(key: str) -> bool:
    # Bare, or under a wrapper's prefix such as 'module.'.
    return any(key.startswith(f'{name}.') or f'.{name}.' in key for name in FROZEN)


def _drop_frozen_keys(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if _is_frozen_key(k)]:
        del state_dict[key]


def _ignore_missing_frozen_keys(module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not _is_frozen_key(k)]
