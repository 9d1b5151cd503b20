"""Building a diffusers denoiser (UNet or transformer) from a config.

``arch`` is the model's diffusers config (enough to count MACs without
weights); ``pretrained`` optionally names a local diffusers directory (a full
pipeline folder with a ``unet`` / ``transformer`` sub-folder, or the model's
folder itself). Loaded weights keep diffusers' state-dict keys.
"""
from pathlib import Path
from typing import Optional, Type

import diffusers
from diffusers import UNet2DConditionModel
from torch import nn

from alter.registry import BACKBONES, MODELS


def _build(cls: Type[nn.Module], arch: dict, pretrained: Optional[str], subfolder: Optional[str],
           load_weights: bool) -> nn.Module:
    """``cls(**arch)`` with random weights, or loaded from ``pretrained`` and checked
    against ``arch``."""
    if pretrained is None or not load_weights:
        return cls(**arch)
    root = Path(pretrained).expanduser()
    folder = root / subfolder if subfolder else root
    what = cls.__name__
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(
            f'pretrained {what} not found: expected a diffusers model folder with config.json '
            f'at {folder} (pretrained={pretrained!r}, subfolder={subfolder!r}). Pass the folder '
            'of a diffusers pipeline saved with save_pretrained, or set subfolder=None if '
            'it is the model folder itself.')
    model = cls.from_pretrained(folder, local_files_only=True)
    mismatched = {k: (v, model.config.get(k)) for k, v in arch.items()
                  if _normalise(model.config.get(k)) != _normalise(v)}
    if mismatched:
        detail = ', '.join(f'{k}: config {a!r} vs weights {b!r}' for k, (a, b) in mismatched.items())
        raise ValueError(f'the {what} at {folder} does not match the configured architecture '
                         f'({detail}); fix model.unet.arch or point pretrained elsewhere')
    return model


@MODELS.register_module('DiffusersUNet')
def build_unet(arch: dict, pretrained: Optional[str] = None, subfolder: Optional[str] = 'unet',
               load_weights: bool = True) -> UNet2DConditionModel:
    """A UNet with architecture ``arch``; weights from ``pretrained`` if given.

    Args:
        arch: ``UNet2DConditionModel`` config keys (e.g. SD2.1's).
        pretrained: local diffusers directory, or None for random weights.
        subfolder: sub-folder of ``pretrained`` holding the UNet (None = the folder itself).
        load_weights: False builds ``arch`` with random weights even if
            ``pretrained`` is set (MAC counting, shape checks).
    """
    return _build(UNet2DConditionModel, arch, pretrained, subfolder, load_weights)


@MODELS.register_module('DiffusersTransformer')
def build_transformer(model_class: str, arch: dict, pretrained: Optional[str] = None,
                      subfolder: Optional[str] = 'transformer',
                      load_weights: bool = True) -> nn.Module:
    """A diffusion transformer of a supported family (DiT, PixArt-alpha, SD3, Flux).

    Args:
        model_class: the diffusers class, e.g. ``DiTTransformer2DModel``; one with a
            backbone adapter (``alter.registry.BACKBONES``).
        arch, pretrained, subfolder, load_weights: as for ``DiffusersUNet``.
    """
    transformers = [n for n in BACKBONES.known_names() if n != UNet2DConditionModel.__name__]
    if model_class not in transformers:
        raise ValueError(f'model_class {model_class!r} is not a supported transformer; '
                         f'expected one of {transformers}')
    return _build(getattr(diffusers, model_class), arch, pretrained, subfolder, load_weights)


def _normalise(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def denoiser_class(unet_cfg: dict) -> Optional[str]:
    """The diffusers class name a ``model.unet`` config builds (None: not a diffusers builder)."""
    if unet_cfg.get('type') == 'DiffusersUNet':
        return UNet2DConditionModel.__name__
    if unet_cfg.get('type') == 'DiffusersTransformer':
        return unet_cfg.get('model_class')
    return None
