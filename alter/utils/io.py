"""Atomic file writes: a temp file in the target's folder, then a rename.

A crash mid-write leaves the previous file intact, never a half-written one.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]


def cache_path(kind: str) -> Path:
    """``$ALTER_CACHE/<kind>`` (default ``~/.cache/alter/<kind>``): derived data such as
    MAC counts and reference features, safe to delete."""
    return Path(os.environ.get('ALTER_CACHE', Path.home() / '.cache' / 'alter')) / kind


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + '\n')


def replace_folder(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)`` on a new sibling folder, then swap it in for ``path``.

    The old folder is renamed aside and removed only after the new one is in
    place, so ``path`` is always either the complete old or the complete new
    folder (a crash between the two renames leaves the old one beside it, named
    ``.<name>.old-*``); a failed ``write`` removes its temp folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.tmp-', dir=path.parent))
    try:
        write(tmp)
        # mkdtemp makes 0700, and some writers 0600 files (safetensors' save_file): give
        # the folder and its files the usual modes, so that a shared checkpoint is readable.
        umask = _umask()
        for folder, _, files in os.walk(tmp):
            os.chmod(folder, 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666 & ~umask)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{path.name}.old-', dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
