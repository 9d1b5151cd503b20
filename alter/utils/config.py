"""Loading a config for a tool: syntax errors name their file, misspelled overrides are refused.

mmengine reports a syntax error in a config as ``File "<unknown>"`` and merges a
``--cfg-options`` key that exists nowhere (``train_cgf.max_iters=5``) as a new,
unused setting. ``load_config`` names the file and line of a syntax error, and
refuses an override whose top-level key is not a setting of the config or of
mmengine's Runner, or whose ``model.<key>`` is not an argument of the model's type.
"""
import ast
import difflib
import inspect
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from mmengine.config import Config
from mmengine.runner import Runner

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
    return cfg


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
