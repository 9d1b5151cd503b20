"""Precomputed autoencoder latents and text context: the cache format and its dataset.

``tools/precompute_cache.py`` encodes a config's training images and captions
once with the frozen autoencoder and text encoder; training on the cache skips
both, since ``LatentDiffusion`` takes batches of ``latents``/``context`` as given.
A cache folder holds

    cache.json           num_samples, shard_size, dtype and the settings that made it
    00000.safetensors    shard k: samples [k * shard_size, (k + 1) * shard_size) of the
    00001.safetensors    source dataset, tensors ``latents`` (n, C, h, w) and ``context``
    ...                  (n, L, D), metadata ``keys`` (JSON list of the samples' ids)
    uncond.safetensors   ``context`` (1, L, D) of the empty caption

Each shard is written whole (temp file + rename), so a stopped run resumes at
the missing shards; a shard that is unreadable or holds the wrong number of
samples (truncated, or made by hand) is rewritten on rerun and refused, by name,
when training reads the cache, and so is a sample with non-finite values.
Samples carry the empty caption's context as ``uncond_context``, which
``LatentDiffusion`` swaps in for ``model.cond_dropout`` of them, as it drops
captions when it encodes them itself.
"""
import json
import operator
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from alter.datasets.text_image import PackedStrings
from alter.registry import DATASETS
from alter.utils.cli import InputError
from alter.utils.io import PathLike, atomic_write, atomic_write_json
from alter.utils.tensors import non_finite

MANIFEST = 'cache.json'
TENSORS = ('latents', 'context')


def cache_cfg_options(root: PathLike) -> List[str]:
    """``--cfg-options`` that make an ALTER or teacher config train on the cache at
    ``root`` instead of rendering and encoding every batch (no encoders are built, so
    no validation either: it generates images)."""
    return ['train_dataloader.dataset._delete_=True',
            'train_dataloader.dataset.type=LatentCacheDataset',
            f'train_dataloader.dataset.root={root}',
            'train_dataloader.collate_fn.type=default_collate',
            'model.autoencoder=None', 'model.text_encoder=None',
            'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']


def shard_path(root: PathLike, shard: int) -> Path:
    return Path(root) / f'{shard:05d}.safetensors'


def num_shards(num_samples: int, shard_size: int) -> int:
    return -(-num_samples // shard_size)


def shard_range(shard: int, shard_size: int, num_samples: int) -> range:
    """Indices of the source dataset's samples in ``shard``."""
    return range(shard * shard_size, min((shard + 1) * shard_size, num_samples))


def _json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, configs dicts)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def open_cache(root: PathLike, settings: Dict[str, Any]) -> None:
    """Start a cache in ``root`` with ``settings`` (num_samples, shard_size, dtype, ...),
    or check that the cache already there was made with the same ones."""
    path = Path(root) / MANIFEST
    settings = _json(settings)
    if path.is_file():
        recorded = json.loads(path.read_text())
        differ = sorted(k for k in set(recorded) | set(settings)
                        if recorded.get(k) != settings.get(k))
        if differ:
            raise ValueError(f'the latent cache in {root} was made with other settings '
                             f'({", ".join(differ)} differ: {[recorded.get(k) for k in differ]} '
                             f'recorded, {[settings.get(k) for k in differ]} now); resume with '
                             'the original ones, or write to a new folder')
        return
    atomic_write_json(path, settings)


def uncond_path(root: PathLike) -> Path:
    return Path(root) / 'uncond.safetensors'


def write_uncond(root: PathLike, context: torch.Tensor) -> None:
    """The empty caption's context (1, L, D), for caption dropout on cached context."""
    atomic_write(uncond_path(root), lambda tmp: save_file(dict(context=context.contiguous()), tmp))


def shard_problem(path: Path, expected: Optional[int]) -> Optional[str]:
    """Why ``path`` is not a complete shard of ``expected`` samples, or (``expected`` None)
    not a readable ``uncond`` file; None when it is one."""
    if not path.is_file():
        return 'missing'
    try:
        with safe_open(path, framework='pt') as file:
            if expected is None:
                file.get_slice('context')
                return None
            found = {name: file.get_slice(name).get_shape()[0] for name in TENSORS}
            found['keys'] = len(json.loads(file.metadata()['keys']))
    except (SafetensorError, KeyError, TypeError, ValueError) as error:
        return f'unreadable ({error})'
    if set(found.values()) != {expected}:
        return f'holding {found} samples instead of {expected} of each'
    return None


def write_shard(path: PathLike, latents: torch.Tensor, context: torch.Tensor,
                keys: List[str]) -> None:
    """Shard file ``path`` of latents (n, C, h, w), context (n, L, D) and n sample ids."""
    if not len(latents) == len(context) == len(keys):
        raise ValueError(f'a shard needs as many latents, contexts and keys; got '
                         f'{len(latents)}, {len(context)} and {len(keys)}')
    tensors = dict(latents=latents.contiguous(), context=context.contiguous())
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={'keys': json.dumps(keys)}))


@DATASETS.register_module()
class LatentCacheDataset(Dataset):
    """Samples of a latent cache (see the module docstring).

    ``dataset[i]`` is a dict: ``latents`` float32 (C, h, w), ``context``
    float32 (L, D), ``uncond_context`` float32 (L, D) (the empty caption's), ``key`` str; batch with ``default_collate``. Each access
    reads one sample's slices from its shard file, nothing more.

    Args:
        root: the cache folder (``--out`` of tools/precompute_cache.py).
    """

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f'no latent cache in {root}: expected {MANIFEST} there; '
                                    'make one with tools/precompute_cache.py CONFIG --out DIR')
        settings = json.loads(manifest.read_text())
        self.num_samples, self.shard_size = settings['num_samples'], settings['shard_size']
        paths = [shard_path(root, k) for k in range(num_shards(self.num_samples, self.shard_size))]
        missing = [p.name for p in paths + [uncond_path(root)] if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f'the latent cache in {root} is incomplete: {len(missing)} of its files missing '
                f'(first {missing[0]}); rerun tools/precompute_cache.py with '
                'the same arguments to finish it')
        keys = []
        for k, path in enumerate(paths + [uncond_path(root)]):
            expected = len(shard_range(k, self.shard_size, self.num_samples)) \
                if k < len(paths) else None
            problem = shard_problem(path, expected)
            if problem:
                raise InputError(f'latent cache file {path} is {problem}; rerun '
                                 'tools/precompute_cache.py with the same arguments to '
                                 'rewrite it')
            if expected is not None:
                with safe_open(path, framework='pt') as file:
                    keys.extend(json.loads(file.metadata()['keys']))
        self._paths = [str(p) for p in paths]
        self._keys = PackedStrings(keys)
        with safe_open(uncond_path(root), framework='pt') as file:
            self._uncond = file.get_tensor('context')[0].float()
        self._check_finite(dict(context=self._uncond), uncond_path(root), 'the empty caption')

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Dict[str, Any]:
        index = operator.index(index)
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f'index {index} out of range for {type(self).__name__} of length '
                             f'{self.num_samples}')
        index %= self.num_samples
        shard, row = divmod(index, self.shard_size)
        # A handle per access: nothing open is shared with forked DataLoader workers.
        with safe_open(self._paths[shard], framework='pt') as file:
            sample = {name: file.get_slice(name)[row:row + 1][0].float() for name in TENSORS}
        self._check_finite(sample, self._paths[shard], f'sample {self._keys[index]}')
        return dict(sample, uncond_context=self._uncond, key=self._keys[index])

    @staticmethod
    def _check_finite(tensors: Dict[str, torch.Tensor], path, sample: str) -> None:
        bad = non_finite(tensors)
        if bad:
            raise InputError(f'latent cache file {path} holds non-finite {", ".join(bad)} of '
                             f'{sample}: the file is corrupt; delete it and rerun '
                             'tools/precompute_cache.py with the same arguments')
