"""Captioned-image datasets for Stable-Diffusion-scale training.

Four sources, one contract: ``dataset[i]`` is a dict

    image    float32 (3, R, R) in [-1, 1]   (the transform's output, default SDImageTransform())
    caption  str, stripped of surrounding whitespace
    key      str, the sample's id (tar key, file name, or key column)

* ``TarShardDataset``      webdataset / img2dataset tar shards (LAION-style).
* ``ImageFolderCaptions``  a folder of images + a metadata CSV / TSV / JSONL (HF imagefolder).
* ``ParquetCaptions``      parquet files with encoded image bytes (needs pyarrow).
* ``HFDiskDataset``        a ``datasets.save_to_disk`` folder (needs the ``datasets`` package).

They share ``CaptionedImageDataset``, which decodes, transforms and skips:

Corrupt samples (an image that fails to decode, a missing or empty caption)
are skipped: ``dataset[i]`` returns the next valid sample after ``i``
(wrapping round), adds one to ``dataset.num_skipped`` and logs a warning with
the key and the reason through mmengine's current logger. When more than
``max_skip_fraction`` of the dataset (at least one sample) fails in a row of
consecutive indices, it raises instead: that is broken data, not a few bad
samples. The counter is per process: each DataLoader worker counts its own
skips, and its warnings carry the running count.

Randomness (random crop, flip) comes from a generator seeded by
``(seed, index)`` of the sample returned, so a sample is cropped the same way
in every epoch, in every worker and in a resumed run.
"""
import abc
import glob
import io
import json
import logging
import operator
import os
import posixpath
import re
import tarfile
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from mmengine.logging import print_log
from PIL import Image
from torch.utils.data import Dataset

from alter.datasets.sd_transforms import SDImageTransform
from alter.registry import DATASETS, TRANSFORMS
from alter.utils.cli import InputError
from alter.utils.images import to_rgb

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')  # preference order when a key has several
# .txt first: img2dataset's .json is per-sample metadata, which may lack a caption.
CAPTION_EXTENSIONS = ('txt', 'json')

# Errors meaning "this sample's data is bad", as opposed to a bug: PIL raises OSError
# (truncated, unidentified, missing file), SyntaxError (broken PNG chunks), EOFError and
# DecompressionBombError; json and utf-8 decoding raise ValueError. Anything else propagates.
SAMPLE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

ImageSource = Union[bytes, str]  # encoded image bytes, or the path of an image file
Transform = Callable[[Image.Image, torch.Generator], torch.Tensor]  # RGB image -> (3, R, R)


class CorruptSample(ValueError):
    """A sample without a usable image or caption."""


class PackedStrings:
    """Read-only strings packed in one uint8 buffer with int64 offsets.

    Python lists of str get copied page by page into every forked DataLoader
    worker as their refcounts change; two numpy arrays stay shared.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [s.encode('utf-8') for s in strings]
        self._offsets = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
        self._buffer = np.frombuffer(b''.join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, stop = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:stop].tobytes().decode('utf-8')


class CaptionedImageDataset(Dataset, abc.ABC):
    """Base class: subclasses index samples, this class decodes, transforms and skips.

    A subclass implements ``__len__``, ``_key(index)`` and ``_read(index)``,
    which returns the image (encoded bytes or a file path) and the raw caption.
    Samples are ``dict(image, caption, key)``; a subclass conditioning on
    something else sets ``condition_key`` and checks it in ``_condition``.

    Args:
        transform: ``dict(type=...)`` built from TRANSFORMS, or a callable
            (RGB PIL image, torch.Generator) -> float32 (3, R, R). None means
            ``SDImageTransform()``: 512 px, centre crop, no flip.
        seed: non-negative int; with the sample's index it seeds the transform's generator.
        max_skip_fraction: raise when more than this fraction of the samples
            (and more than one) fail at consecutive indices.
    """

    condition_key = 'caption'

    def __init__(self, transform: Union[dict, Transform, None] = None, seed: int = 0,
                 max_skip_fraction: float = 0.1) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f'seed must be a non-negative int (numpy SeedSequence), got {seed!r}')
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f'max_skip_fraction must be in [0, 1], got {max_skip_fraction!r}')
        if transform is None:
            transform = SDImageTransform()
        elif isinstance(transform, dict):
            transform = TRANSFORMS.build(transform)
        self.transform: Transform = transform
        self.seed = seed
        self.max_skip_fraction = max_skip_fraction
        self.num_skipped = 0  # skip events in this process since construction

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of indexed samples, corrupt ones included."""

    @abc.abstractmethod
    def _key(self, index: int) -> str:
        """Id of sample ``index``; cheap, and must not fail on corrupt samples."""

    @abc.abstractmethod
    def _read(self, index: int) -> Tuple[ImageSource, Any]:
        """(encoded image bytes or file path, raw caption) of sample ``index``."""

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """Sample ``index``, or the first valid one after it (wrapping) if it is corrupt."""
        index = operator.index(index)
        size = len(self)
        if not -size <= index < size:
            raise IndexError(
                f'index {index} out of range for {type(self).__name__} of length {size}')
        allowed = max(1, int(self.max_skip_fraction * size))
        attempts = min(allowed + 1, size)  # never retry a sample within one call
        for attempt in range(attempts):
            i = (index + attempt) % size
            try:
                image, caption = self._decode(i)
            except SAMPLE_ERRORS as error:
                last = self._skip(i, error)
                continue
            # Seeded by the sample returned, not the index asked for: a sample is
            # transformed the same way however it is reached.
            return {'image': self.transform(image, self._generator(i)),
                    self.condition_key: caption, 'key': self._key(i)}
        raise RuntimeError(
            f'{type(self).__name__}: {attempts} consecutive samples from index {index % size} '
            f'failed (more than max_skip_fraction={self.max_skip_fraction} of {size} samples); '
            f'the last was {last}. The data looks broken, not just a few corrupt samples: check '
            f'the files, or raise max_skip_fraction if this much loss is acceptable.')

    def _decode(self, index: int) -> Tuple[Image.Image, Any]:
        """Fully decoded RGB image and checked condition of sample ``index``; raises on bad data."""
        source, condition = self._read(index)
        condition = self._condition(condition)
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            # Decoding every pixel here makes a truncated file raise now, inside the skip.
            return to_rgb(image), condition

    def _condition(self, caption: Any) -> str:
        """The stripped caption; raises ``CorruptSample`` for a missing or empty one."""
        if not isinstance(caption, str) or not caption.strip():
            raise CorruptSample(f'missing or empty caption ({caption!r})')
        return caption.strip()

    def _skip(self, index: int, error: Exception) -> str:
        """Count and log a skipped sample; returns the reason for error messages."""
        self.num_skipped += 1
        reason = f'sample {self._key(index)!r} (index {index}): {type(error).__name__}: {error}'
        print_log(f'{type(self).__name__} skipped {reason}; {self.num_skipped} skipped so far '
                  f'in this process', logger='current', level=logging.WARNING)
        return reason

    def _generator(self, index: int) -> torch.Generator:
        # SeedSequence mixes (seed, index): seed + index would give seed 1 / index 0 the
        # stream of seed 0 / index 1.
        state = np.random.SeedSequence([self.seed, index]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def _require_samples(self, source: str) -> None:
        if len(self) == 0:
            raise ValueError(f'{type(self).__name__} found no samples in {source}; expected at '
                             f'least one image with a caption')


_BRACES = re.compile(r'\{([^{}]*)\}')
_RANGE = re.compile(r'(\d+)\.\.(\d+)')
_GLOB_CHARS = re.compile(r'[*?[]')


def expand_braces(pattern: str) -> List[str]:
    """Bash / webdataset brace expansion, in order.

    ``'s{00..02}.tar'`` -> ``['s00.tar', 's01.tar', 's02.tar']`` (zero padding
    follows the first bound); ``'{a,b}.tar'`` -> ``['a.tar', 'b.tar']``.
    """
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    bounds = _RANGE.fullmatch(body)
    if bounds is not None:
        first, last = bounds.groups()
        if int(last) < int(first):
            raise ValueError(f'brace range {{{body}}} in {pattern!r} runs backwards; '
                             f'write {{{first}..{last}}} with the smaller bound first')
        options = [f'{k:0{len(first)}d}' for k in range(int(first), int(last) + 1)]
    elif ',' in body:
        options = body.split(',')
    else:
        raise ValueError(f'cannot expand {{{body}}} in {pattern!r}: expected a range like '
                         f'{{00000..00009}} or a list like {{a,b}}')
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [path for option in options for path in expand_braces(head + option + tail)]


def resolve_paths(patterns: Union[str, Sequence[str]], what: str) -> List[str]:
    """Existing files named by a path, glob or brace pattern, or a list of them, in order.

    Raises if no pattern is given or any pattern names nothing that exists.
    """
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    if not patterns:
        raise ValueError(f'no {what} given: expected a path, a glob like data/*.tar, a brace '
                         f'pattern like data/{{00000..00009}}.tar, or a list of them')
    files = []
    for pattern in map(os.fspath, patterns):
        for path in expand_braces(pattern):
            matches = sorted(glob.glob(path)) if _GLOB_CHARS.search(path) else [path]
            if not matches:
                raise FileNotFoundError(f'no {what} matches {path!r} (from {pattern!r}); '
                                        f'check the folder and the pattern')
            for match in matches:
                if os.path.isdir(match):
                    raise IsADirectoryError(f'{what} {match!r} is a folder; expected files: '
                                            f'name them with a glob like {match}/*')
                if not os.path.isfile(match):
                    raise FileNotFoundError(f'{what} {match!r} (from {pattern!r}) does not exist')
            files.extend(matches)
    return files


def _check_columns(found: Sequence[str], wanted: Dict[str, Optional[str]], source: str) -> None:
    """Raise unless every column named by an argument (argument -> column) is in ``found``."""
    missing = {arg: column for arg, column in wanted.items()
               if column is not None and column not in found}
    if missing:
        raise ValueError(
            f'{source} has no column {", ".join(map(repr, missing.values()))}; found columns '
            f'{list(found)}. Name the right ones with '
            f'{", ".join(f"{arg}=..." for arg in missing)}')


def _image_source(cell: Any) -> ImageSource:
    """Encoded bytes of a table cell: bytes, or HF's ``{'bytes': ..., 'path': ...}`` dict."""
    if isinstance(cell, dict):
        # HF datasets keep only the path of images that were never embedded.
        cell = cell.get('bytes') or cell.get('path')
    if not isinstance(cell, (bytes, str)):
        raise CorruptSample(f'no image: expected encoded bytes or a dict with bytes, got '
                            f'{type(cell).__name__}')
    return cell


# One row per sample key of a tar shard; offsets of -1 mark a missing member.
_TAR_INDEX = np.dtype([('shard', np.int32), ('image_offset', np.int64), ('image_size', np.int64),
                       ('caption_offset', np.int64), ('caption_size', np.int64),
                       ('caption_json', np.bool_)])


def _scan_tar(path: str) -> Dict[str, Dict[str, Tuple[int, int]]]:
    """key -> {extension: (data offset, size)} for the files in the tar at ``path``.

    Reads headers only: tarfile seeks over member data. A key is the member's
    path up to the first dot of its base name, as in webdataset.
    """
    groups: Dict[str, Dict[str, Tuple[int, int]]] = {}
    try:
        # 'r:' refuses compression: a compressed tar cannot seek to a member.
        with tarfile.open(path, mode='r:') as tar:
            for member in tar:
                directory, name = posixpath.split(member.name)
                stem, dot, extension = name.partition('.')
                if member.isfile() and dot:
                    groups.setdefault(posixpath.join(directory, stem), {})[extension.lower()] = (
                        member.offset_data, member.size)
    except tarfile.ReadError as error:
        raise ValueError(f'cannot read tar shard {path!r} ({error}); expected an uncompressed tar '
                         f'(webdataset / img2dataset layout). Compressed shards cannot be read at '
                         f'random: decompress them first') from error
    return groups


@DATASETS.register_module()
class TarShardDataset(CaptionedImageDataset):
    """Samples of webdataset-style uncompressed tar shards (img2dataset's output).

    Members sharing a key form a sample: an image ``.jpg/.jpeg/.png/.webp`` and
    a caption ``.txt`` or ``.json``. At init the tar headers are scanned into
    an index of member offsets, so ``dataset[i]`` is one seek and read. Each
    process opens its own file handle, lazily: a handle inherited through fork
    shares its file offset with the parent's, so workers seeking it would race.

    Args:
        shards: a path, glob (``data/*.tar``) or brace pattern
            (``data/{00000..00009}.tar``), or a list of them.
        caption_fields: fields of a ``.json`` caption tried in order; the first
            present and non-empty one is the caption.
        **kwargs: ``transform``, ``seed``, ``max_skip_fraction`` of CaptionedImageDataset.
    """

    def __init__(self, shards: Union[str, Sequence[str]],
                 caption_fields: Sequence[str] = ('caption', 'text'), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shards = resolve_paths(shards, 'tar shard')
        self.caption_fields = tuple(caption_fields)
        keys, rows = [], []
        for shard, path in enumerate(self.shards):
            for key, members in _scan_tar(path).items():
                image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), (-1, 0))
                text = next((e for e in CAPTION_EXTENSIONS if e in members), None)
                caption = members[text] if text is not None else (-1, 0)
                keys.append(key)
                rows.append((shard, *image, *caption, text == 'json'))
        self._keys = PackedStrings(keys)
        self._index = np.array(rows, dtype=_TAR_INDEX)
        self._file: Optional[BinaryIO] = None
        self._file_owner: Optional[Tuple[int, int]] = None  # (pid, shard) of self._file
        self._require_samples(f'{len(self.shards)} tar shard(s) from {shards!r}')

    def __len__(self) -> int:
        return len(self._index)

    def _key(self, index: int) -> str:
        return self._keys[index]

    def _read(self, index: int) -> Tuple[bytes, Any]:
        row = self._index[index]
        if row['image_offset'] < 0:
            raise CorruptSample(f'no image member ({"/".join(IMAGE_EXTENSIONS)})')
        if row['caption_offset'] < 0:
            raise CorruptSample(f'no caption member ({"/".join(CAPTION_EXTENSIONS)})')
        file = self._open(int(row['shard']))
        image = self._read_member(file, row['image_offset'], row['image_size'])
        text = self._read_member(file, row['caption_offset'], row['caption_size']).decode('utf-8')
        if not row['caption_json']:
            return image, text
        record = json.loads(text)
        if not isinstance(record, dict):
            raise CorruptSample(f'.json caption is a {type(record).__name__}, expected an object')
        return image, next((record[f] for f in self.caption_fields if record.get(f)), None)

    @staticmethod
    def _read_member(file: BinaryIO, offset: int, size: int) -> bytes:
        file.seek(int(offset))
        data = file.read(int(size))
        if len(data) != size:
            raise CorruptSample(f'member truncated: {len(data)} of {size} bytes in the shard')
        return data

    def _open(self, shard: int) -> BinaryIO:
        """This process's handle on ``shard``: one at a time, reopened after a fork."""
        owner = (os.getpid(), shard)
        if self._file_owner != owner:
            if self._file is not None:
                self._file.close()  # after a fork this closes the child's copy only
            self._file = open(self.shards[shard], 'rb')
            self._file_owner = owner
        return self._file

    def __del__(self) -> None:
        # Close the handle with the dataset instead of leaving it to a ResourceWarning.
        if getattr(self, '_file', None) is not None:
            self._file.close()

    def __getstate__(self) -> Dict[str, Any]:
        # Spawned workers unpickle the dataset: send no handle, they open their own.
        state = self.__dict__.copy()
        state.update(_file=None, _file_owner=None)
        return state


def _read_captions_file(path: str) -> pd.DataFrame:
    """Table of a UTF-8 .csv, .tsv or .jsonl captions file, every cell as written (no type
    guessing); a file that does not parse raises ``InputError`` naming it."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in ('.jsonl', '.csv', '.tsv'):
        raise ValueError(f'captions file {path!r} has extension {extension!r}; expected .csv, '
                         f'.tsv or .jsonl (one {{"file_name": ..., "caption": ...}} per line)')
    expected = ('one JSON object per line, {"file_name": ..., "caption": ...}'
                if extension == '.jsonl' else 'a header row, then one row per image, every row '
                'with as many fields (quote fields that contain the delimiter)')
    try:
        if extension == '.jsonl':
            return pd.read_json(path, lines=True, dtype=False, convert_dates=False,
                                encoding='utf-8')
        # keep_default_na=False: an empty caption stays '' (skipped later) instead of NaN.
        return pd.read_csv(path, sep='\t' if extension == '.tsv' else ',', dtype=str,
                           keep_default_na=False, encoding='utf-8')
    except UnicodeDecodeError as error:
        raise InputError(f'captions file {path!r} is not UTF-8 ({error.reason} at byte '
                         f'{error.start}); save it as UTF-8, e.g. iconv -f latin1 -t utf-8') \
            from None
    except ValueError as error:  # pandas' ParserError is a ValueError too
        raise InputError(f'captions file {path!r} does not parse ({error}); expected '
                         f'{expected}') from None


@DATASETS.register_module()
class ImageFolderCaptions(CaptionedImageDataset):
    """Images in a folder, listed with their captions in a metadata file (HF imagefolder style).

    Args:
        root: folder holding the images.
        captions: metadata file, relative to ``root`` (an absolute path is kept):
            ``.csv``, ``.tsv`` or ``.jsonl``.
        file_column: column of image paths relative to ``root``; also the sample's key.
            A path leading outside ``root`` (absolute, or through ``..``) is not read:
            its sample is skipped as corrupt.
        caption_column: column of captions.
        **kwargs: ``transform``, ``seed``, ``max_skip_fraction`` of CaptionedImageDataset.
    """

    def __init__(self, root: str, captions: str, file_column: str = 'file_name',
                 caption_column: str = 'caption', **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not os.path.isdir(root):
            raise FileNotFoundError(f'image folder {root!r} does not exist or is not a folder; '
                                    f'expected the folder holding the images')
        path = os.path.join(root, captions)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'captions file {path!r} does not exist; expected a .csv, '
                                    f'.tsv or .jsonl file, named relative to root={root!r}')
        table = _read_captions_file(path)
        _check_columns(table.columns, dict(file_column=file_column, caption_column=caption_column),
                       f'captions file {path!r}')
        self.root = root
        # A missing cell (NaN in JSONL) becomes '': the sample is skipped when read.
        self._files = PackedStrings(f if isinstance(f, str) else '' for f in table[file_column])
        self._captions = PackedStrings(c if isinstance(c, str) else ''
                                       for c in table[caption_column])
        self._require_samples(f'captions file {path!r}')

    def __len__(self) -> int:
        return len(self._files)

    def _key(self, index: int) -> str:
        return self._files[index]

    def _read(self, index: int) -> Tuple[str, str]:
        name = self._files[index]
        inside = os.path.normpath(name)
        if os.path.isabs(name) or inside == '..' or inside.startswith('..' + os.sep):
            raise CorruptSample(f'file name {name!r} lies outside root={self.root!r}; image '
                                'names must be relative paths inside the folder')
        return os.path.join(self.root, inside), self._captions[index]


@DATASETS.register_module()
class ParquetCaptions(CaptionedImageDataset):
    """Rows of parquet files holding encoded images and captions (HF hub / img2dataset layout).

    The files are read into memory at init with pandas (pyarrow engine), which
    suits datasets of a few GB; for LAION scale use TarShardDataset.

    Args:
        path: a path, glob or brace pattern, or a list of them.
        image_column: encoded image bytes, or dicts with ``bytes`` as HF datasets write.
        caption_column: captions.
        key_column: sample ids; None keys a row as ``{file name}:{row}``.
        **kwargs: ``transform``, ``seed``, ``max_skip_fraction`` of CaptionedImageDataset.
    """

    def __init__(self, path: Union[str, Sequence[str]], image_column: str = 'image',
                 caption_column: str = 'caption', key_column: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.files = resolve_paths(path, 'parquet file')
        columns = dict(image_column=image_column, caption_column=caption_column,
                       key_column=key_column)
        tables, keys = [], []
        for file in self.files:
            table = _read_parquet(file)
            _check_columns(table.columns, columns, f'parquet file {file!r}')
            tables.append(table[[image_column, caption_column]])
            keys.extend(map(str, table[key_column]) if key_column is not None else
                        (f'{os.path.basename(file)}:{row}' for row in range(len(table))))
        self._table = pd.concat(tables, ignore_index=True)  # columns: image, caption
        self._keys = PackedStrings(keys)
        self._require_samples(f'{len(self.files)} parquet file(s) from {path!r}')

    def __len__(self) -> int:
        return len(self._table)

    def _key(self, index: int) -> str:
        return self._keys[index]

    def _read(self, index: int) -> Tuple[ImageSource, Any]:
        return _image_source(self._table.iat[index, 0]), self._table.iat[index, 1]


def _read_parquet(path: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError as error:  # pandas found no parquet engine
        raise ImportError(f'reading parquet needs the `pyarrow` package, which is not installed: '
                          f'pip install pyarrow (pandas said: {error})') from error


@DATASETS.register_module()
class HFDiskDataset(CaptionedImageDataset):
    """A dataset written by HF ``datasets``' ``save_to_disk`` (memory-mapped, not loaded).

    Needs the ``datasets`` package, which only alter's ``tests`` extra installs.

    Args:
        path: the folder ``save_to_disk`` wrote.
        split: the split to use when the folder holds a DatasetDict; None for a Dataset.
        image_column: an ``Image`` feature (read undecoded, so that a corrupt
            image is skipped here rather than raising inside datasets) or encoded bytes.
        caption_column: captions.
        key_column: sample ids; None keys a row by its index.
        **kwargs: ``transform``, ``seed``, ``max_skip_fraction`` of CaptionedImageDataset.
    """

    def __init__(self, path: str, split: Optional[str] = None, image_column: str = 'image',
                 caption_column: str = 'caption', key_column: Optional[str] = None,
                 **kwargs: Any) -> None:
        try:
            import datasets
        except ImportError as error:
            raise ImportError('HFDiskDataset needs the `datasets` package, which is not '
                              'installed: pip install datasets (or export the data to parquet '
                              'and use ParquetCaptions)') from error
        super().__init__(**kwargs)
        if not os.path.isdir(path):
            raise FileNotFoundError(f'dataset folder {path!r} does not exist; expected a folder '
                                    f'written by datasets.Dataset.save_to_disk')
        data = datasets.load_from_disk(path)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f'{path!r} holds a DatasetDict with splits {list(data)}, got '
                                 f'split={split!r}; pass one of them as split')
            data = data[split]
        elif split is not None:
            raise ValueError(f'{path!r} holds a single Dataset, which has no splits; drop '
                             f'split={split!r}')
        _check_columns(data.column_names, dict(image_column=image_column,
                                               caption_column=caption_column,
                                               key_column=key_column), f'dataset {path!r}')
        if isinstance(data.features[image_column], datasets.Image):
            data = data.cast_column(image_column, datasets.Image(decode=False))
        self.image_column, self.caption_column = image_column, caption_column
        self._data = data.select_columns([image_column, caption_column])
        self._keys = None if key_column is None else PackedStrings(map(str, data[key_column]))
        self._require_samples(f'dataset {path!r}')

    def __len__(self) -> int:
        return len(self._data)

    def _key(self, index: int) -> str:
        return str(index) if self._keys is None else self._keys[index]

    def _read(self, index: int) -> Tuple[ImageSource, Any]:
        row = self._data[index]
        return _image_source(row[self.image_column]), row[self.caption_column]
