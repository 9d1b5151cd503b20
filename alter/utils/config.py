"""Loading a config for a tool: syntax errors name their file, misspelled overrides are
refused, and a pretrained folder describes its own backbone.

mmengine reports a syntax error in a config as ``File "<unknown>"`` and merges a
``--cfg-options`` key that exists nowhere (``train_cgf.max_iters=5``) as a new,
unused setting. ``load_config`` names the file and line of a syntax error, and
refuses an override whose top-level key is not a setting of the config or of
mmengine's Runner, or whose ``model.<key>`` is not an argument of the model's type.

When ``model.pretrained`` names a local diffusers pipeline folder, what the
folder's JSON configs say replaces what the config's ``_base_`` files say about
the backbone (``derive_from_pretrained``); what you set yourself wins.
"""
import ast
import difflib
import inspect
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from mmengine.config import Config
from mmengine.runner import Runner

from alter.models.pipeline_folder import read_autoencoder, read_denoiser, read_noise_schedule
from alter.models.unet import denoiser_class
from alter.registry import MODELS
from alter.utils.cli import InputError

# Top-level settings mmengine's Runner reads besides its constructor's arguments.
RUNNER_EXTRA_KEYS = ('model_wrapper_cfg', 'compile', 'runner_type', 'activation_checkpointing',
                     'efficient_conv_bn_eval')
ALWAYS_ALLOWED = ('type', '_delete_')  # a component's type, and mmengine's replace marker


def load_config(path: str, options: Optional[dict] = None) -> Config:
    """The config at ``path`` with the ``--cfg-options`` ``options`` merged in."""
    if not Path(path).is_file():
        raise InputError(f'config {path} does not exist (a relative path is taken from the '
                         f'current directory, {Path.cwd()}); pass a config file, e.g. '
                         'configs/alter/tiny_e4_s35.py')
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as error:
        raise InputError(_syntax_message(Path(path), error)) from None
    if options:
        check_option_keys(cfg, options)
        cfg.merge_from_dict(options)
    derive_from_pretrained(cfg, written_keys(Path(path)) | set(options or {}))
    return cfg


def derive_from_pretrained(cfg: Config, yours: Set[str]) -> None:
    """Describe the backbone by ``model.pretrained``'s folder, in place; print what was derived.

    Derived (``alter.models.pipeline_folder`` reads the JSON):

    * ``model.unet.arch`` from ``unet/config.json`` or ``transformer/config.json``
      (the config's ``model.unet.subfolder``): it replaces the ``_base_`` architecture
      whole;
    * ``model.latent_scale`` from ``vae/config.json`` (2 ** (levels - 1));
    * ``model.noise_scheduler``: each key the config sets, from
      ``scheduler/scheduler_config.json`` if the folder has one;
    * ``model.resolution``: the training crops (``train_dataloader.dataset.transform
      .resolution``) where the config has them, since MAC costs must be those of the
      inputs training sees; otherwise the folder's native resolution (the denoiser's
      ``sample_size`` x latent scale, else the VAE's ``sample_size``).

    Precedence: a key in ``yours`` (``--cfg-options`` keys and the keys the config
    file itself writes, see ``written_keys``) keeps its value; the folder's value
    replaces anything ``_base_`` files set. Without ``model.pretrained`` nothing changes.
    """
    model = cfg.get('model') or {}
    if not model.get('pretrained'):
        return
    root = Path(model.pretrained).expanduser()
    if not root.is_dir():
        raise InputError(f'model.pretrained={model.pretrained!r} is not a folder: pass a local '
                         'diffusers pipeline folder (unet/ or transformer/, vae/, ...), or '
                         "model.pretrained=None for the config's own architecture with random "
                         'weights')

    kept: List[str] = []

    def covered(key: str) -> bool:
        return any(key == k or key.startswith(k + '.') for k in yours)

    def is_yours(key: str) -> bool:
        """Whether ``key`` is yours; noted as kept if so."""
        if covered(key):
            kept.append(key)
        return covered(key)

    lines: List[str] = []
    unet = model.unet
    expected = denoiser_class(unet)
    denoiser = None
    if expected is not None and not is_yours('model.unet.arch'):  # the whole arch only
        own = unet.get('pretrained')  # the denoiser's own folder, if not the pipeline's
        subfolder = unet.get('subfolder', inspect.signature(MODELS.get(unet.type))
                             .parameters['subfolder'].default)
        denoiser = read_denoiser(Path(own).expanduser() if own else root, subfolder, expected,
                                 named=unet.get('arch', {}))
        arch = dict(denoiser.arch, **{k: v for k, v in unet.get('arch', {}).items()
                                      if is_yours(f'model.unet.arch.{k}')})
        unet.arch = arch
        where = denoiser.path.relative_to(root) if not own else denoiser.path
        listed = ', '.join(f'{k}={v!r}' for k, v in sorted(arch.items()))
        lines.append(f'model.unet.arch        {denoiser.class_name} from {where}: {listed}')
        if denoiser.ignored:
            lines.append(f'  (not arguments of {denoiser.class_name} in this diffusers, left out: '
                         f'{", ".join(denoiser.ignored)})')

    if model.get('autoencoder', {}) is None:
        # No autoencoder (training on cached latents): nothing says how the latents
        # relate to pixels but the config itself.
        lines.append('model.latent_scale, model.resolution  kept from the config '
                     '(model.autoencoder=None)')
    elif not (covered('model.latent_scale') and covered('model.resolution')):
        vae_cfg = model.get('autoencoder') or {}
        vae = read_autoencoder(Path(vae_cfg['pretrained']).expanduser()
                               if vae_cfg.get('pretrained') else root,
                               vae_cfg.get('subfolder', 'vae'))
        vae_where = vae.path.relative_to(root) if vae.path.is_relative_to(root) else vae.path
        if not is_yours('model.latent_scale'):
            model.latent_scale = vae.latent_scale
            lines.append(f'model.latent_scale     {vae.latent_scale} from {vae_where} '
                         f'(2^(levels - 1) of block_out_channels; its scaling_factor '
                         f'{vae.scaling_factor}, shift_factor {vae.shift_factor} are applied by '
                         'the autoencoder)')
        if not is_yours('model.resolution'):
            scale = model.get('latent_scale', 8)
            size = denoiser.sample_size if denoiser else unet.get('arch', {}).get('sample_size')
            native, how = ((size * scale, f'sample_size {size} x latent scale {scale}') if size
                           else (vae.sample_size, f'{vae_where} sample_size'))
            crop = _training_crop(cfg)
            if crop is not None:
                model.resolution = crop
                lines.append(f'model.resolution       {crop}: the training crops '
                             f'(train_dataloader.dataset.transform.resolution); native {native} '
                             f'({how})')
            elif native is not None:
                model.resolution = native
                lines.append(f'model.resolution       {native}: native ({how})')
            else:
                raise InputError(f'neither {denoiser.path if denoiser else "model.unet.arch"} nor '
                                 f'{vae.path} records a sample_size: set model.resolution (pixels)')

    if model.get('noise_scheduler'):
        keys = [k for k in model.noise_scheduler if not is_yours(f'model.noise_scheduler.{k}')]
        path, values = read_noise_schedule(root, keys)
        if path is None:
            lines.append('model.noise_scheduler  kept from the config (no '
                         'scheduler/scheduler_config.json)')
        else:
            model.noise_scheduler.update(values)
            listed = ', '.join(f'{k}={v!r}' for k, v in values.items())
            lines.append(f'model.noise_scheduler  from {path.relative_to(root)}: {listed}')

    print(f'model.pretrained={model.pretrained!r}: derived from its JSON configs')
    for line in lines:
        print(textwrap.fill(line, width=100, subsequent_indent=' ' * 25))
    if kept:
        print(textwrap.fill('kept as set (--cfg-options or the config file itself): ' + ', '.join(
            f'{k}={_value(cfg, k)!r}' for k in kept), width=100, subsequent_indent='  '))


def _value(cfg: Config, key: str):
    """The value at dotted ``key`` of ``cfg``."""
    value = cfg
    for part in key.split('.'):
        value = value[part]
    return value


def _training_crop(cfg: Config) -> Optional[int]:
    """The side of the training images' crops, where the config's dataset crops them."""
    transform = cfg.get('train_dataloader', {}).get('dataset', {}).get('transform')
    size = transform.get('resolution') if isinstance(transform, dict) else None
    return size if isinstance(size, int) else None


def written_keys(path: Path) -> Set[str]:
    """The ``model.*`` keys the config file at ``path`` writes itself (its ``_base_`` files
    aside), dotted: ``model.resolution``, ``model.unet.arch.sample_size``; a dict written
    with ``_delete_=True`` counts as a whole. None for a file in a ``_base_`` folder, even
    when passed itself: such files hold the defaults others start from."""
    keys: Set[str] = set()
    if '_base_' in path.parts:
        return keys
    for node in ast.parse(path.read_text(encoding='utf-8')).body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'model'
                                                for t in node.targets):
            _collect_keys(node.value, 'model', keys)
    return keys


def _collect_keys(node: ast.AST, prefix: str, keys: Set[str]) -> None:
    if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'dict':
        items = [(kw.arg, kw.value) for kw in node.keywords if kw.arg is not None]
    elif isinstance(node, ast.Dict):
        items = [(k.value, v) for k, v in zip(node.keys, node.values)
                 if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    else:
        keys.add(prefix)  # a value, not a dict literal
        return
    if any(k == '_delete_' for k, _ in items):
        keys.add(prefix)
    for key, value in items:
        if key != '_delete_':
            _collect_keys(value, f'{prefix}.{key}', keys)


def check_option_keys(cfg: Config, options: Dict[str, object]) -> None:
    """Raise naming the near matches if an override's top-level or model key is unknown."""
    runner_keys = set(inspect.signature(Runner.__init__).parameters) - {'self', 'cfg'}
    top_level = set(cfg.keys()) | runner_keys | set(RUNNER_EXTRA_KEYS)
    model_type = options.get('model.type', cfg.get('model', {}).get('type'))
    model_keys = model_arguments(model_type) if model_type else set()
    for key in options:
        parts = key.split('.')
        if parts[0] not in top_level:
            raise InputError(_unknown(key, parts[0], top_level, 'a setting of the config or of '
                                      "mmengine's Runner"))
        if parts[0] == 'model' and len(parts) > 1 and model_keys and parts[1] not in model_keys:
            raise InputError(_unknown(key, parts[1], model_keys,
                                      f'an argument of the model type {model_type}'))


def model_arguments(model_type) -> Set[str]:
    """Keyword arguments a model config of ``model_type`` may set: its constructor's,
    and its base classes' where the constructor passes ``**kwargs`` on."""
    cls = MODELS.get(model_type) if isinstance(model_type, str) else model_type
    names = set(ALWAYS_ALLOWED)
    for klass in cls.__mro__:
        if '__init__' not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())
        names.update(p.name for p in params if p.name != 'self' and p.kind in (
            p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _unknown(option: str, key: str, known: Set[str], what: str) -> str:
    near = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f'did you mean {" or ".join(map(repr, near))}?' if near else \
        f'known keys: {", ".join(sorted(known))}'
    return f'--cfg-options {option}: {key!r} is not {what}; {hint}'


def _syntax_message(path: Path, error: SyntaxError) -> str:
    where, found = path, _first_syntax_error(path)
    if found is not None:
        where, error = found
    line = (error.text or '').rstrip()
    return (f'config {where}, line {error.lineno}: {error.msg}' + (f':\n    {line}' if line else '')
            + '\nfix the syntax of that file (it is Python)')


def _first_syntax_error(path: Path) -> Optional[Tuple[Path, SyntaxError]]:
    """The file (``path`` or one of its ``_base_`` files, recursively) that does not parse."""
    try:
        tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
    except SyntaxError as error:
        return path, error
    for base in _bases(tree):
        found = _first_syntax_error(path.parent / base)
        if found is not None:
            return found
    return None


def _bases(tree: ast.Module) -> List[str]:
    """The local ``_base_`` files a parsed config names (package bases ``pkg::...`` left out)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '_base_'
                                                for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return []
            bases = [value] if isinstance(value, str) else list(value)
            return [b for b in bases if '::' not in b]
    return []
