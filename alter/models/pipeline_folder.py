"""What a local diffusers pipeline folder's JSON configs say about its model.

A pipeline folder saved with ``save_pretrained`` describes itself in JSON:

* ``unet/config.json`` or ``transformer/config.json`` -- the denoiser's class
  (``_class_name``) and architecture;
* ``vae/config.json`` -- the autoencoder: ``block_out_channels`` has one entry
  per level, and every level but the last halves the image, so the latent
  scale is ``2 ** (levels - 1)`` (8 for SD's VAE); ``scaling_factor`` and
  ``shift_factor`` are applied by the autoencoder itself when it loads;
* ``scheduler/scheduler_config.json`` (optional) -- the noise schedule the
  model was trained with (``prediction_type`` above all).

Each is read with ``json`` alone: nothing in the folder is executed or
unpickled. A missing or malformed file raises ``InputError`` naming it.
"""
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import diffusers
from diffusers import SchedulerMixin

from alter.registry import BACKBONES
from alter.units.backbones import denoiser_folders
from alter.utils.cli import InputError

# diffusers' own remapping of its legacy class, by ``norm_type``: the DiT and
# PixArt-alpha folders on the hub still name ``Transformer2DModel``.
LEGACY_TRANSFORMERS = {'ada_norm_zero': 'DiTTransformer2DModel',
                       'ada_norm_single': 'PixArtTransformer2DModel'}


@dataclass
class Denoiser:
    """The denoiser of a folder: ``arch`` keeps the keys the caller named and every
    key whose value departs from the diffusers class's default."""

    path: Path  # its config.json
    class_name: str
    arch: dict
    ignored: List[str]  # config.json keys the installed diffusers class does not take

    @property
    def sample_size(self) -> Optional[int]:
        """The latent side the model was made for (None: not recorded)."""
        size = self.arch.get('sample_size')
        if isinstance(size, (list, tuple)):
            if len(set(size)) != 1:
                raise InputError(f'{self.path}: sample_size {size} is not square; set '
                                 'model.resolution (pixels) yourself')
            size = size[0]
        return size


@dataclass
class Autoencoder:
    """What ``vae/config.json`` says: latent scale, scaling and native image size."""

    path: Path
    latent_scale: int
    scaling_factor: Optional[float]
    shift_factor: Optional[float]
    sample_size: Optional[int]


def read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path``; InputError naming the file if it is missing or malformed."""
    if not path.is_file():
        raise InputError(f'{path} not found: expected the {what} of a diffusers pipeline folder '
                         '(saved with save_pretrained); check model.pretrained')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f'{path} is not valid JSON ({error}); expected the {what} that '
                         'save_pretrained writes: restore or re-save that file') from None
    if not isinstance(config, dict):
        raise InputError(f'{path} holds a JSON {type(config).__name__}, expected an object (the '
                         f'{what} that save_pretrained writes)')
    return config


def read_denoiser(root: Path, subfolder: Optional[str], expected_class: str,
                  named: Iterable[str] = ()) -> Denoiser:
    """The denoiser of the pipeline folder ``root``.

    Args:
        root: the pipeline folder, or the model's own folder with ``subfolder=None``.
        subfolder: the sub-folder holding its config.json.
        expected_class: the diffusers class the config builds; a folder holding
            another family (in ``subfolder`` or in another denoiser sub-folder:
            ``unet``, ``transformer``) is refused, since its objective and
            conditioning differ.
        named: architecture keys to keep even where they equal the class default
            (those the config's own architecture lists).
    """
    path = (root / subfolder if subfolder else root) / 'config.json'
    if not path.is_file() and subfolder:
        for other in (root / name / 'config.json' for name in denoiser_folders()):
            if other.is_file():
                name = _class_name(read_json(other, 'denoiser config'), expected_class)
                raise InputError(f'{path} not found, but {other} describes a {name}; the config '
                                 f'builds a {expected_class} from {subfolder}/: start from a '
                                 f'config written for a {name} (README, Supported backbones), '
                                 'or set model.unet.subfolder')
    config = read_json(path, 'denoiser config')
    name = _class_name(config, expected_class)
    if name not in BACKBONES.known_names():
        raise InputError(f'{path} describes a {name}; supported denoisers: '
                         f'{", ".join(BACKBONES.known_names())}')
    if name != expected_class:
        raise InputError(f'{path} describes a {name}, but the config builds a {expected_class} '
                         '(model.unet), with that family\'s objective and conditioning; start from '
                         f'a config written for a {name} (README, Supported backbones)')
    arch, ignored = _architecture(getattr(diffusers, name), config, path, named)
    return Denoiser(path, name, arch, ignored)


def _class_name(config: dict, default: str) -> str:
    """The diffusers class a model config.json names (``default`` if it names none)."""
    name = config.get('_class_name', default)
    if name == 'Transformer2DModel':
        name = LEGACY_TRANSFORMERS.get(config.get('norm_type'), name)
    return name


def read_autoencoder(root: Path, subfolder: Optional[str]) -> Autoencoder:
    """The autoencoder config in ``root/subfolder`` (the folder itself for None)."""
    path = (root / subfolder if subfolder else root) / 'config.json'
    config = read_json(path, 'autoencoder (VAE) config')
    levels = config.get('block_out_channels')
    if not isinstance(levels, list) or not levels:
        raise InputError(f'{path}: expected block_out_channels, a non-empty list (one entry per '
                         f'level of an AutoencoderKL), got {levels!r}')
    size = config.get('sample_size')
    if isinstance(size, list) and len(set(size)) == 1:
        size = size[0]
    return Autoencoder(path, 2**(len(levels) - 1), config.get('scaling_factor'),
                       config.get('shift_factor'), size if isinstance(size, int) else None)


def read_noise_schedule(root: Path, keys: Iterable[str]) -> Tuple[Optional[Path], Dict[str, object]]:
    """``keys`` of the folder's ``scheduler/scheduler_config.json``: where the file lacks a
    key, the default of its scheduler class (what diffusers' ``from_pretrained`` would
    use), or nothing if that class does not take the key. (None, {}) without the file."""
    path = root / 'scheduler' / 'scheduler_config.json'
    if not path.exists():
        return None, {}
    config = read_json(path, 'noise scheduler config')
    cls = getattr(diffusers, str(config.get('_class_name')), None)
    defaults = _defaults(cls) if isinstance(cls, type) and issubclass(cls, SchedulerMixin) else {}
    return path, {k: config.get(k, defaults.get(k)) for k in keys
                  if k in config or k in defaults}


def _defaults(cls: type) -> Dict[str, object]:
    """The keyword defaults of ``cls.__init__`` (``inspect.Parameter.empty``: required)."""
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != 'self' and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _architecture(cls: type, config: dict, path: Path, named: Iterable[str]) -> Tuple[dict, list]:
    """The constructor keys of ``config``: those ``named`` and those departing from ``cls``'s
    defaults (a key the file lacks takes the default, as ``from_pretrained`` does)."""
    defaults = _defaults(cls)
    missing = [k for k, v in defaults.items() if v is inspect.Parameter.empty and k not in config]
    if missing:
        raise InputError(f'{path}: {cls.__name__} needs {missing}, which the file does not give')
    effective = {k: config.get(k, v) for k, v in defaults.items()}
    named = set(named)
    arch = {k: v for k, v in effective.items()
            if k in named or _plain(v) != _plain(defaults[k])}
    ignored = sorted(k for k in config if not k.startswith('_') and k not in defaults)
    return arch, ignored


def _plain(value) -> str:
    """A comparable form: tuples and lists alike."""
    return json.dumps(value, default=str)
