"""Latent diffusion training: a denoiser, its objective and frozen conditioning.

``LatentDiffusion`` trains the denoiser (a UNet or a diffusion transformer, held
as ``unet``) densely (the teacher of the embedded benchmark, any plain
fine-tune); ``ALTER`` builds on it. The denoiser's family is handled by its
backbone adapter (``alter.units.backbones``), the noise, timesteps and target
by the objective (``alter.models.objectives``). Both draw timesteps,
noise and caption dropout from the model's own generator, re-seeded from
(seed, step) every step, so a resumed run draws exactly what an uninterrupted
one would. Draws are made for the *global* batch and each rank keeps its
samples (rank r holds global positions r, r + W, ... as mmengine's samplers
deal them out), so N ranks train exactly like one process with the global
batch, up to float summation order.
"""
import inspect
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.dist import all_reduce_dict, get_rank, get_world_size
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from torch import nn

from alter.inference.pipeline import TextToImage
from alter.inference.routing import ExpertRouter
from alter.models.conditioning import Context, context_batch_size, context_to, map_context
from alter.models.objectives import NoisyBatch
from alter.registry import MODELS, OBJECTIVES
from alter.units.backbones import backbone_of

FROZEN = ('teacher', 'autoencoder', 'text_encoder')


@MODELS.register_module()
class LatentDiffusion(BaseModel):
    """Plain (dense) diffusion training of a denoiser.

    Args:
        unet: config of the denoiser (``DiffusersUNet`` or ``DiffusersTransformer``).
        noise_scheduler: keyword arguments of the objective's noise scheduler
            (``DDPMScheduler``'s for DDPM objectives, whose ``prediction_type``
            sets the target: epsilon, v or sample).
        objective: ``OBJECTIVES`` config (``DDPMObjective``, ``LearnedSigmaObjective``,
            ``FlowMatchingObjective``); ``noise_scheduler`` is added here.
        autoencoder, text_encoder: frozen conditioning components (see
            ``alter.models.conditioning``) for batches of ``image`` and the text
            encoder's condition (``caption``, or ``label`` for ``ClassLabels``);
            batches that carry ``latents`` / ``context`` need none.
        cond_dropout: probability of training a sample on the null condition
            (the empty caption, DiT's null class), which classifier-free
            guidance needs at sampling time.
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
                 objective: dict = dict(type='DDPMObjective'),
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
        self.backbone = backbone_of(self.unet, type(self).__name__)
        self.backbone.prepare_training(self.unet)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.objective = OBJECTIVES.build(dict(objective, noise_scheduler=noise_scheduler))
        self.scheduler = self.objective.scheduler
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
        if self.text_encoder is None:
            return
        expected = self.backbone.context_dim(self.unet)
        if self.text_encoder.dim != expected:
            raise ValueError(f'the conditioning encoder gives {self.text_encoder.dim}-d states '
                             f'(None: class labels) but the {type(self.unet).__name__} reads '
                             f'{expected}-d ones (None: no text)')
        if self.text_encoder.dim is not None and \
                self.text_encoder.context_length != self.context_length:
            raise ValueError(f'model.context_length={self.context_length} but the text '
                             f'encoder gives {self.text_encoder.context_length} tokens')

    # -- data ------------------------------------------------------------------

    def start_step(self, data: dict) -> Tuple[torch.Tensor, Context]:
        """Re-seed the generator for this step; latents and context of the batch."""
        self.rng.manual_seed(hash((self.seed, int(self.num_steps))) & 0xFFFFFFFFFFFF)
        return self.encode(self.data_preprocessor(data, True))

    def draw(self, sampler, batch_size: int, *shape, **kwargs) -> torch.Tensor:
        """``sampler(global_batch, *shape, generator=rng)``; this rank's rows (batch_size, *shape)."""
        world = get_world_size()
        values = sampler(*((batch_size * world, ) + shape), generator=self.rng, **kwargs)
        return values[get_rank()::world]

    @torch.no_grad()
    def encode(self, data: dict) -> Tuple[torch.Tensor, Context]:
        """Latents (B, C, h, w) and context of a batch: (B, L, D) text states, or the
        dict of the denoiser's conditioning arguments (``alter.models.conditioning``).

        Takes ``latents``/``context`` as given, or encodes ``image`` and the
        conditions (``caption`` or ``label``) with the frozen components;
        conditions are dropped to the null one ('' or the null class) with
        probability ``cond_dropout`` (precomputed context: replaced by the batch's
        ``uncond_context``, the encoding of '', with the same draws). The context
        is drawn first, so cached and encoded batches drop the same captions.
        """
        context = self._context(data)
        latents = self._latents(data)
        return latents, context_to(context, latents.device, latents.dtype)

    def _context(self, data: dict) -> Context:
        if 'context' in data:
            context = data['context']
            if self.cond_dropout == 0:
                return context
            if 'uncond_context' not in data:
                raise KeyError(f"model.cond_dropout={self.cond_dropout} needs 'uncond_context' "
                               'beside precomputed context (LatentCacheDataset gives it); or '
                               'set model.cond_dropout=0')
            drop = self.draw(torch.rand, context_batch_size(context)) < self.cond_dropout
            return map_context(lambda uncond, kept: torch.where(
                drop.view(-1, *([1] * (kept.dim() - 1))).to(kept.device), uncond.to(kept), kept),
                data['uncond_context'], context)
        key = None if self.text_encoder is None else self.text_encoder.condition_key
        if key not in data:
            raise KeyError(f"the batch has no 'context', and no {key or 'caption'!r} with "
                           f'model.text_encoder set to encode it; batch keys: {sorted(data)}')
        drop = self.draw(torch.rand, len(data[key])) < self.cond_dropout
        null = self.text_encoder.null_condition
        return self.text_encoder([null if d else c for c, d in zip(data[key], drop.tolist())])

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

    def noisy_input(self, latents: torch.Tensor) -> NoisyBatch:
        """x_t, training-scale timesteps (B,) and the denoising target for clean ``latents``."""
        return self.objective.draw(self.draw, latents)

    def predict(self, model: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor,
                context: Context) -> torch.Tensor:
        """``model``'s (the student's, possibly wrapped, or the teacher's) output in the
        latent layout, called as its family's pipelines call it."""
        return self.backbone.predict(model, x_t, timesteps, context)

    # -- training --------------------------------------------------------------

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> Dict[str, torch.Tensor]:
        """One denoising step of the denoiser (``optim_wrapper['unet']``)."""
        latents, context = self.start_step(data)
        batch = self.noisy_input(latents)
        wrapper = optim_wrapper['unet']
        with wrapper.optim_context(self.unet):
            prediction = self.predict(self.unet, batch.x_t, batch.timesteps, context)
            loss = self.objective.denoising_loss(prediction, batch.target)
        wrapper.update_params(loss)
        self.num_steps += 1
        log = {'loss_denoise': loss.detach()}
        all_reduce_dict(log, 'mean')  # in place: log the global batch's value
        return log

    # -- validation ------------------------------------------------------------

    def inference_router(self) -> Optional[ExpertRouter]:
        """What routes the denoiser's steps at inference: nothing (dense) here."""
        return None

    def generate(self, data: dict, unet: Optional[nn.Module] = None,
                 router: Optional[ExpertRouter] = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] of a validation batch, from the shared sampler.

        ``data``: ``samples``, dicts with ``caption`` and ``seed`` (of the initial
        noise), and ``sampling``, ``TextToImage`` settings (``num_steps``,
        ``guidance_scale``, ``scheduler``). ``unet``: default the trained denoiser.
        """
        samples = data['samples']
        denoiser = unet if unet is not None else getattr(self.unet, 'module', self.unet)
        generate = TextToImage.from_model(self, unet=denoiser, router=router)
        return generate([s['caption'] for s in samples], [s['seed'] for s in samples],
                        batch_size=len(samples), progress=False, **data['sampling'])

    @torch.no_grad()
    def val_step(self, data: dict) -> List[dict]:
        """The batch's samples (``generate``), each with the ``image`` (3, H, W) the
        model generates for it as deployed (ALTER: the routed experts, hard skipping)."""
        images = self.generate(data, router=self.inference_router())
        return [dict(sample, image=image) for sample, image in zip(data['samples'], images)]

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context: Context,
                mode: str = 'tensor') -> torch.Tensor:
        """The denoiser's prediction (B, C', h, w) at training-scale ``timesteps`` (B,)."""
        if mode != 'tensor':
            raise ValueError(f"{type(self).__name__}.forward supports mode='tensor' only, got "
                             f'{mode!r}; training runs through train_step')
        return self.predict(self.unet, latents, timesteps, context)


def _is_frozen_key(key: str) -> bool:
    # Bare, or under a wrapper's prefix such as 'module.'.
    return any(key.startswith(f'{name}.') or f'.{name}.' in key for name in FROZEN)


def _drop_frozen_keys(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if _is_frozen_key(k)]:
        del state_dict[key]


def _ignore_missing_frozen_keys(module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not _is_frozen_key(k)]
