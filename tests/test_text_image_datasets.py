"""Text-image datasets on tiny synthetic files: tar shards, image folders, parquet, HF."""
import io
import json
import logging
import os
import pickle
import sys
import tarfile

import datasets
import pandas as pd
import pyarrow as pa
import pytest
import torch
from mmengine.logging import MMLogger
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from alter.datasets.sd_transforms import SDImageTransform
from alter.datasets.text_image import (HFDiskDataset, ImageFolderCaptions, ParquetCaptions,
                                       TarShardDataset, expand_braces)
from alter.registry import DATASETS

R = 8  # output resolution in pixels
TRANSFORM = dict(type='SDImageTransform', resolution=R)
# Colour name -> RGB (0..255) of the solid test images.
COLOURS = {'red': (255, 0, 0), 'green': (0, 255, 0), 'blue': (0, 0, 255)}


def encode(colour: str, fmt: str = 'JPEG', size: tuple = (24, 16)) -> bytes:
    """A solid ``colour`` image of ``size`` (W, H), encoded as ``fmt``."""
    buffer = io.BytesIO()
    Image.new('RGB', size, COLOURS[colour]).save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = encode('red', size=(64, 64))
    return data[:len(data) // 2]


def write_tar(path, members: dict) -> str:
    """An uncompressed tar at ``path`` holding ``members`` (name -> bytes or str), in order."""
    with tarfile.open(path, 'w') as tar:
        for name, data in members.items():
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def numbered_shard(path, keys, corrupt=()) -> str:
    """A shard of a red JPEG + .txt caption per key; keys in ``corrupt`` get a truncated JPEG."""
    members = {}
    for key in keys:
        members[f'{key}.jpg'] = truncated_jpeg() if key in corrupt else encode('red')
        members[f'{key}.txt'] = f'caption {key}'
    return write_tar(path, members)


def assert_colour(image: torch.Tensor, colour: str, atol: float = 0.06) -> None:
    """``image`` (3, R, R) in [-1, 1] is a solid ``colour`` (JPEG error within ``atol``)."""
    assert image.shape == (3, R, R) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    expected = torch.tensor(COLOURS[colour], dtype=torch.float32) / 127.5 - 1.0
    torch.testing.assert_close(image, expected[:, None, None].expand(3, R, R), atol=atol, rtol=0)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def mm_records():
    """Warnings logged through mmengine's current logger (it does not propagate to root,
    so pytest's caplog misses them)."""
    handler, logger = _Records(), MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


# -- transform -------------------------------------------------------------------------------

def test_transform_resizes_shorter_side_and_crops():
    # Left half red, right half blue, 32 x 16: shorter side -> 8 gives 16 x 8, centre crop 8 x 8.
    image = Image.new('RGB', (32, 16), COLOURS['red'])
    image.paste(COLOURS['blue'], (16, 0, 32, 16))
    out = SDImageTransform(resolution=R)(image, torch.Generator().manual_seed(0))
    assert out.shape == (3, R, R)
    torch.testing.assert_close(out[:, :, 0], torch.tensor([1., -1., -1.])[:, None].expand(3, R))
    torch.testing.assert_close(out[:, :, -1], torch.tensor([-1., -1., 1.])[:, None].expand(3, R))


def test_transform_random_crop_and_flip_follow_the_generator():
    image = Image.frombytes('RGB', (40, 16), bytes(range(256)) * 7 + bytes(128))
    transform = SDImageTransform(resolution=R, center_crop=False, random_flip=True)
    outs = [transform(image, torch.Generator().manual_seed(s)) for s in range(8)]
    torch.testing.assert_close(outs[0], transform(image, torch.Generator().manual_seed(0)),
                               rtol=0, atol=0)
    assert len({out.numpy().tobytes() for out in outs}) > 1  # crops and flips vary with the seed
    with pytest.raises(ValueError, match='RGB'):
        transform(image.convert('L'), torch.Generator())


# -- tar shards ------------------------------------------------------------------------------

def test_tar_shard_images_and_captions_from_txt_and_json(tmp_path):
    shard = write_tar(tmp_path / 'shard.tar', {
        'a.jpg': encode('red'), 'a.txt': 'a red image\n',
        'b.png': encode('green', 'PNG'), 'b.json': json.dumps({'caption': 'green', 'text': 'x'}),
        'c.jpeg': encode('blue'), 'c.json': json.dumps({'text': 'blue via text', 'url': 'u'}),
        'sub/d.webp': encode('green', 'WEBP', (16, 30)), 'sub/d.txt': 'webp in a folder',
    })
    dataset = TarShardDataset(shard, transform=TRANSFORM)
    assert len(dataset) == 4
    samples = [dataset[i] for i in range(4)]
    assert [s['key'] for s in samples] == ['a', 'b', 'c', 'sub/d']
    assert [s['caption'] for s in samples] == ['a red image', 'green', 'blue via text',
                                               'webp in a folder']
    for sample, colour in zip(samples, ('red', 'green', 'blue', 'green')):
        assert_colour(sample['image'], colour)
    assert dataset.num_skipped == 0


def test_json_caption_fields_fall_back_in_order(tmp_path):
    shard = write_tar(tmp_path / 's.tar', {
        'a.png': encode('red', 'PNG'), 'a.json': json.dumps({'prompt': 'p', 'caption': 'c'}),
        'b.png': encode('red', 'PNG'), 'b.json': json.dumps({'caption': '', 'text': 't'})})
    assert TarShardDataset(shard, transform=TRANSFORM)[1]['caption'] == 't'  # empty: next field
    dataset = TarShardDataset(shard, caption_fields=('prompt',), transform=TRANSFORM)
    assert dataset[0]['caption'] == 'p'


def test_brace_and_glob_shard_patterns(tmp_path):
    for shard in range(3):
        numbered_shard(tmp_path / f'{shard:05d}.tar', [f'{shard}{k}' for k in 'xy'])
    numbered_shard(tmp_path / 'other.tar', ['z'])
    expected = ['0x', '0y', '1x', '1y', '2x', '2y']
    braces = TarShardDataset(str(tmp_path / '{00000..00002}.tar'), transform=TRANSFORM)
    globbed = TarShardDataset(str(tmp_path / '0*.tar'), transform=TRANSFORM)
    listed = TarShardDataset([str(tmp_path / '00000.tar'), str(tmp_path / '{00001,00002}.tar')],
                             transform=TRANSFORM)
    for dataset in (braces, globbed, listed):
        assert [dataset[i]['key'] for i in range(len(dataset))] == expected
    assert expand_braces('s{8..10}-{a,b}') == ['s8-a', 's8-b', 's9-a', 's9-b', 's10-a', 's10-b']


def noise_png(seed: int, size: tuple) -> bytes:
    """A PNG of uniform noise of ``size`` (W, H): every crop and flip shows."""
    pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format='PNG')
    return buffer.getvalue()


def test_random_access_equals_sequential_and_is_seeded(tmp_path):
    shard = write_tar(tmp_path / 's.tar', {
        **{f'{k}.png': noise_png(i, (30 + 3 * i, 12)) for i, k in enumerate('abcdef')},
        **{f'{k}.txt': k for k in 'abcdef'}})
    transform = dict(TRANSFORM, center_crop=False, random_flip=True)
    dataset = TarShardDataset(shard, transform=transform, seed=3)
    sequential = [dataset[i] for i in range(6)]
    shuffled = {i: dataset[i] for i in (4, 1, 5, 0, 3, 2)}
    resumed = TarShardDataset(shard, transform=transform, seed=3)
    for i, sample in enumerate(sequential):
        assert (sample['key'], sample['caption']) == ('abcdef'[i], 'abcdef'[i])
        for other in (shuffled[i], resumed[i]):
            assert other['key'] == sample['key'] and other['caption'] == sample['caption']
            torch.testing.assert_close(other['image'], sample['image'], rtol=0, atol=0)
    assert dataset[-1]['key'] == 'f'


def test_random_crops_depend_on_seed_and_index(tmp_path):
    gradient = Image.frombytes('RGB', (64, 8), bytes(range(192)) * 8)
    buffer = io.BytesIO()
    gradient.save(buffer, format='PNG')
    shard = write_tar(tmp_path / 's.tar', {**{f'{k}.png': buffer.getvalue() for k in 'abcd'},
                                           **{f'{k}.txt': k for k in 'abcd'}})
    transform = dict(TRANSFORM, center_crop=False)
    crops = [TarShardDataset(shard, transform=transform, seed=s)[i]['image'].numpy().tobytes()
             for s in (0, 1) for i in range(4)]
    assert len(set(crops)) > 4  # same pixels everywhere: only the generator moves the crop


@pytest.mark.parametrize('members, reason', [
    ({'b.jpg': truncated_jpeg(), 'b.txt': 'truncated'}, 'truncated'),
    ({'b.jpg': b'garbage bytes, not a jpeg', 'b.txt': 'garbage'}, 'cannot identify'),
    ({'b.jpg': encode('red'), 'b.txt': '  \n'}, 'empty caption'),
    ({'b.jpg': encode('red'), 'b.json': '{"url": "no caption"}'}, 'empty caption'),
    ({'b.jpg': encode('red')}, 'no caption member'),
    ({'b.txt': 'no image'}, 'no image member'),
])
def test_corrupt_sample_is_skipped_counted_and_logged(tmp_path, mm_records, members, reason):
    shard = write_tar(tmp_path / 's.tar', {'a.jpg': encode('red'), 'a.txt': 'first', **members,
                                           'c.png': encode('blue', 'PNG'), 'c.txt': 'third'})
    dataset = TarShardDataset(shard, transform=TRANSFORM)
    assert len(dataset) == 3 and dataset[0]['key'] == 'a' and dataset.num_skipped == 0
    sample = dataset[1]
    assert (sample['key'], sample['caption']) == ('c', 'third')
    assert_colour(sample['image'], 'blue')
    assert dataset.num_skipped == 1
    assert len(mm_records) == 1
    message = mm_records[0].getMessage()
    assert "'b'" in message and reason in message.lower() and '1 skipped so far' in message


def test_skipping_wraps_around(tmp_path):
    dataset = TarShardDataset(numbered_shard(tmp_path / 's.tar', 'abc', corrupt='c'),
                              transform=TRANSFORM)
    assert dataset[2]['key'] == 'a' and dataset.num_skipped == 1


def test_too_many_consecutive_failures_raise(tmp_path):
    keys = [f'k{i}' for i in range(10)]
    shard = numbered_shard(tmp_path / 's.tar', keys, corrupt={'k2', 'k3', 'k4'})
    dataset = TarShardDataset(shard, transform=TRANSFORM, max_skip_fraction=0.2)  # 2 in a row
    assert dataset[3]['key'] == 'k5' and dataset.num_skipped == 2
    with pytest.raises(RuntimeError, match=r'3 consecutive samples from index 2 .*max_skip_frac'):
        dataset[2]
    broken = TarShardDataset(numbered_shard(tmp_path / 'b.tar', 'ab', corrupt='ab'),
                             transform=TRANSFORM, max_skip_fraction=1.0)
    with pytest.raises(RuntimeError, match='data looks broken'):
        broken[0]
    assert broken.num_skipped == 2  # each sample tried once, no endless wrapping


def test_handles_are_per_process_and_not_pickled(tmp_path, monkeypatch):
    dataset = TarShardDataset(numbered_shard(tmp_path / 's.tar', 'ab'), transform=TRANSFORM)
    first = dataset[0]
    parent_handle = dataset._file
    assert dataset._open(0) is parent_handle  # kept while the process and shard stay
    monkeypatch.setattr(os, 'getpid', lambda: -1)  # as in a forked worker
    assert dataset._open(0) is not parent_handle and parent_handle.closed
    monkeypatch.undo()
    clone = pickle.loads(pickle.dumps(dataset))  # as sent to a spawned worker
    assert clone._file is None
    torch.testing.assert_close(clone[0]['image'], first['image'], rtol=0, atol=0)


def test_dataloader_with_workers_collates_captions_to_lists(tmp_path):
    keys = [f'{i:02d}' for i in range(8)]
    shard = numbered_shard(tmp_path / 's.tar', keys, corrupt={'03'})
    dataset = TarShardDataset(shard, transform=dict(TRANSFORM, center_crop=False))
    dataset[0]  # the parent opens a handle before the workers fork
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=default_collate)
    batches = list(loader)
    assert [b['image'].shape for b in batches] == [(4, 3, R, R)] * 2
    assert [key for b in batches for key in b['key']] == ['00', '01', '02', '04', '04', '05',
                                                          '06', '07']
    assert batches[0]['caption'] == ['caption 00', 'caption 01', 'caption 02', 'caption 04']
    images = torch.cat([b['image'] for b in batches])
    torch.testing.assert_close(images, torch.stack([dataset[i]['image'] for i in range(8)]),
                               rtol=0, atol=0)


# -- image folder ----------------------------------------------------------------------------

def _write_folder(root, captions_name: str, file_column='file_name', caption_column='caption'):
    os.makedirs(root / 'sub')
    (root / 'red.png').write_bytes(encode('red', 'PNG'))
    (root / 'sub' / 'blue.jpg').write_bytes(encode('blue'))
    rows = [{file_column: 'red.png', caption_column: 'a "red" square'},
            {file_column: 'sub/blue.jpg', caption_column: 'blue, with a comma'}]
    path = root / captions_name
    if captions_name.endswith('.jsonl'):
        path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    else:
        sep = '\t' if captions_name.endswith('.tsv') else ','
        pd.DataFrame(rows).to_csv(path, sep=sep, index=False)


@pytest.mark.parametrize('captions', ['metadata.csv', 'metadata.tsv', 'metadata.jsonl'])
def test_image_folder_captions(tmp_path, captions):
    _write_folder(tmp_path, captions)
    dataset = ImageFolderCaptions(str(tmp_path), captions, transform=TRANSFORM)
    samples = [dataset[0], dataset[1]]
    assert [s['key'] for s in samples] == ['red.png', 'sub/blue.jpg']
    assert [s['caption'] for s in samples] == ['a "red" square', 'blue, with a comma']
    assert_colour(samples[0]['image'], 'red', atol=0)
    assert_colour(samples[1]['image'], 'blue')


def test_image_folder_custom_columns_missing_file_and_empty_caption(tmp_path, mm_records):
    _write_folder(tmp_path, 'meta.csv', file_column='image', caption_column='text')
    with open(tmp_path / 'meta.csv', 'a') as f:
        f.write('missing.png,a caption\nred.png,\n')
    dataset = ImageFolderCaptions(str(tmp_path), 'meta.csv', file_column='image',
                                  caption_column='text', transform=TRANSFORM,
                                  max_skip_fraction=0.5)
    assert len(dataset) == 4
    # missing.png and red.png without caption are skipped, wrapping round to row 0.
    assert dataset[2]['key'] == 'red.png' and dataset[2]['caption'] == 'a "red" square'
    assert dataset.num_skipped == 4
    assert 'missing.png' in mm_records[0].getMessage()
    assert 'empty caption' in mm_records[1].getMessage()


def test_image_folder_bad_inputs(tmp_path):
    _write_folder(tmp_path, 'metadata.csv')
    with pytest.raises(ValueError, match=r"no column 'text'.*found columns \['file_name', "
                                         r"'caption'\].*caption_column="):
        ImageFolderCaptions(str(tmp_path), 'metadata.csv', caption_column='text')
    with pytest.raises(FileNotFoundError, match='image folder'):
        ImageFolderCaptions(str(tmp_path / 'nope'), 'metadata.csv')
    with pytest.raises(FileNotFoundError, match='captions file'):
        ImageFolderCaptions(str(tmp_path), 'nope.csv')
    (tmp_path / 'meta.txt').write_text('x')
    with pytest.raises(ValueError, match=r'\.csv, \.tsv or \.jsonl'):
        ImageFolderCaptions(str(tmp_path), 'meta.txt')
    (tmp_path / 'empty.csv').write_text('file_name,caption\n')
    with pytest.raises(ValueError, match='found no samples'):
        ImageFolderCaptions(str(tmp_path), 'empty.csv')


# -- parquet and HF --------------------------------------------------------------------------

def _parquet_frames():
    """Two parquet tables: raw bytes, and HF-style {'bytes', 'path'} dicts with a key column."""
    return [pd.DataFrame({'image': [encode('red'), b'corrupt'], 'caption': ['red', 'bad'],
                          'key': ['r', 'x']}),
            pd.DataFrame({'image': [{'bytes': encode('green', 'PNG'), 'path': None}],
                          'caption': ['green'], 'key': ['g']})]


def test_parquet_captions_reads_bytes_and_hf_dicts(tmp_path):
    files = [tmp_path / 'a.parquet', tmp_path / 'b.parquet']
    for file, frame in zip(files, _parquet_frames()):
        frame.to_parquet(file)
    dataset = ParquetCaptions(str(tmp_path / '*.parquet'), transform=TRANSFORM)
    assert len(dataset) == 3
    first, second = dataset[0], dataset[1]
    assert (first['key'], first['caption']) == ('a.parquet:0', 'red')
    assert_colour(first['image'], 'red')
    assert (second['key'], second['caption']) == ('b.parquet:0', 'green')  # row 1 is corrupt
    assert_colour(second['image'], 'green', atol=0)
    assert dataset.num_skipped == 1
    keyed = DATASETS.build(dict(type='ParquetCaptions', path=str(tmp_path / '{a,b}.parquet'),
                                key_column='key', transform=TRANSFORM))
    assert [keyed[i]['key'] for i in range(3)] == ['r', 'g', 'g']
    with pytest.raises(ValueError, match=r"no column 'img'.*image_column="):
        ParquetCaptions(str(files[0]), image_column='img')


def test_parquet_without_engine_names_pyarrow(tmp_path, monkeypatch):
    pd.DataFrame({'a': [1]}).to_parquet(tmp_path / 'a.parquet')
    for engine in ('pyarrow.parquet', 'fastparquet'):  # None in sys.modules: not importable
        monkeypatch.setitem(sys.modules, engine, None)
    with pytest.raises(ImportError, match='pip install pyarrow'):
        ParquetCaptions(str(tmp_path / 'a.parquet'))


def test_hf_disk_dataset_without_datasets_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'datasets', None)
    with pytest.raises(ImportError, match='pip install datasets'):
        HFDiskDataset(str(tmp_path))


def test_hf_disk_dataset(tmp_path):
    features = datasets.Features({'image': datasets.Image(), 'text': datasets.Value('string'),
                                  'id': datasets.Value('string')})
    rows = features.encode_batch({
        'image': [Image.open(io.BytesIO(encode('red', 'PNG'))), b'corrupt',
                  {'bytes': encode('blue', 'PNG'), 'path': None}],
        'text': ['red', 'bad', 'blue'], 'id': ['r', 'x', 'b']})
    # An explicit fingerprint skips datasets' dill hashing of the table, which breaks
    # on some dill / pyarrow combinations and is beside the point here.
    data = datasets.Dataset(pa.table(rows, schema=features.arrow_schema),
                            info=datasets.DatasetInfo(features=features), fingerprint='test')
    datasets.DatasetDict(train=data).save_to_disk(str(tmp_path / 'dict'))
    data.save_to_disk(str(tmp_path / 'single'))
    dataset = HFDiskDataset(str(tmp_path / 'dict'), split='train', caption_column='text',
                            key_column='id', transform=TRANSFORM)
    samples = [dataset[i] for i in range(3)]
    assert [(s['key'], s['caption']) for s in samples] == [('r', 'red'), ('b', 'blue'),
                                                           ('b', 'blue')]
    assert_colour(samples[0]['image'], 'red', atol=0)
    assert dataset.num_skipped == 1
    single = HFDiskDataset(str(tmp_path / 'single'), caption_column='text', transform=TRANSFORM)
    assert single[0]['key'] == '0'
    with pytest.raises(ValueError, match=r"splits \['train'\]"):
        HFDiskDataset(str(tmp_path / 'dict'), split='test')
    with pytest.raises(ValueError, match='single Dataset'):
        HFDiskDataset(str(tmp_path / 'single'), split='train')


# -- building and bad input ------------------------------------------------------------------

def test_build_from_config(tmp_path):
    shard = numbered_shard(tmp_path / 's.tar', 'ab')
    _write_folder(tmp_path / 'folder', 'metadata.jsonl')
    for cfg in (dict(type='TarShardDataset', shards=shard),
                dict(type='ImageFolderCaptions', root=str(tmp_path / 'folder'),
                     captions='metadata.jsonl')):
        dataset = DATASETS.build(dict(cfg, transform=TRANSFORM))
        assert dataset[0]['image'].shape == (3, R, R)
    assert DATASETS.build(dict(type='TarShardDataset', shards=shard))[0]['image'].shape == (
        3, 512, 512)  # default transform: SD's 512 px


def test_bad_shard_inputs(tmp_path):
    with pytest.raises(ValueError, match='no tar shard given'):
        TarShardDataset([])
    with pytest.raises(FileNotFoundError, match=r"'.*missing\.tar' .*does not exist"):
        TarShardDataset(str(tmp_path / 'missing.tar'))
    with pytest.raises(FileNotFoundError, match='no tar shard matches'):
        TarShardDataset(str(tmp_path / '*.tar'))
    with pytest.raises(IsADirectoryError, match='glob'):
        TarShardDataset(str(tmp_path))
    with pytest.raises(ValueError, match='expected a range'):
        TarShardDataset(str(tmp_path / '{00000}.tar'))
    with pytest.raises(ValueError, match='smaller bound first'):
        TarShardDataset(str(tmp_path / '{3..1}.tar'))
    with tarfile.open(tmp_path / 'packed.tar.gz', 'w:gz') as tar:
        tar.addfile(tarfile.TarInfo('a.txt'), io.BytesIO())
    with pytest.raises(ValueError, match='uncompressed'):
        TarShardDataset(str(tmp_path / 'packed.tar.gz'))
    with pytest.raises(ValueError, match='found no samples'):
        TarShardDataset(write_tar(tmp_path / 'empty.tar', {}))
    shard = numbered_shard(tmp_path / 's.tar', 'a')
    with pytest.raises(ValueError, match='seed'):
        TarShardDataset(shard, seed=-1)
    with pytest.raises(KeyError, match='SDImageTransform'):
        TarShardDataset(shard, transform=dict(type='SDTransform'))
    with pytest.raises(IndexError, match='out of range'):
        TarShardDataset(shard, transform=TRANSFORM)[1]


def test_imagenet_folder_numbers_sorted_class_folders(tmp_path):
    """Labels are the class folders' sorted order (ILSVRC synsets -> 0..999, as DiT's)."""
    for synset, colour in (('n02', 'green'), ('n01', 'red')):
        (tmp_path / synset).mkdir()
        (tmp_path / synset / f'{colour}.png').write_bytes(encode(colour, 'PNG'))
    (tmp_path / 'n01' / 'notes.txt').write_text('not an image')
    dataset = DATASETS.build(dict(type='ImageNetFolder', root=str(tmp_path), transform=TRANSFORM))
    assert dataset.classes == ['n01', 'n02'] and len(dataset) == 2
    samples = [dataset[0], dataset[1]]
    assert [(s['key'], s['label']) for s in samples] == [('n01/red.png', 0), ('n02/green.png', 1)]
    assert_colour(samples[1]['image'], 'green', atol=0)
    with pytest.raises(FileNotFoundError, match='folder of class folders'):
        DATASETS.build(dict(type='ImageNetFolder', root=str(tmp_path / 'missing')))
