"""tools/precompute_cache.py and LatentCacheDataset on the embedded benchmark's tiny config."""
import os

import pytest
import torch
from mmengine.config import Config
from torch.utils.data import default_collate

from alter.datasets.latent_cache import shard_path
from alter.datasets.shapes import collate as shapes_collate
from alter.registry import DATASETS, MODELS

from .conftest import ROOT, load_tool

CONFIG = os.path.join(ROOT, 'configs', 'alter', 'shapes_e4_s35.py')
NUM_SAMPLES = 10  # 3 shards of 4, the last one partial; batches of 3 straddle shards


def precompute(out, *extra) -> None:
    load_tool('precompute_cache').main([CONFIG, '--out', str(out), '--shard-size', '4',
                                        '--batch-size', '3', *extra, '--cfg-options',
                                        f'train_dataloader.dataset.num_samples={NUM_SAMPLES}'])


def test_cache_holds_the_models_own_encoding(tmp_path):
    precompute(tmp_path)
    cache = DATASETS.build(dict(type='LatentCacheDataset', root=str(tmp_path)))
    assert len(cache) == NUM_SAMPLES
    cached = default_collate([cache[i] for i in range(NUM_SAMPLES)])
    assert cached['key'] == [str(i) for i in range(NUM_SAMPLES)]  # Shapes-T2I: the index

    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({'model.cond_dropout': 0.0,
                         'train_dataloader.dataset.num_samples': NUM_SAMPLES})
    model = MODELS.build(cfg.model)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    latents, context = model.encode(shapes_collate([dataset[i] for i in range(NUM_SAMPLES)]))
    assert cached['latents'].shape == (NUM_SAMPLES, 4, 8, 8) and cached['latents'].dtype == \
        torch.float32
    assert cached['context'].shape == (NUM_SAMPLES, 24, 384)
    torch.testing.assert_close(cached['context'], context)  # MiniLM batched differently
    # The VAE posterior is sampled: each shard from its own seed, batch by batch.
    posterior = []
    for start, stop in ((0, 4), (4, 8), (8, 10)):
        model.rng.manual_seed(start)
        for first in range(start, stop, 3):
            batch = shapes_collate([dataset[i] for i in range(first, min(first + 3, stop))])
            posterior.append(model.encode(batch)[0])
    torch.testing.assert_close(cached['latents'], torch.cat(posterior), rtol=0, atol=0)
    assert (cached['latents'] - latents).abs().max() > 1e-3  # other draws, other samples
    # A cached batch reaches the UNet as it is: no encoder runs on it.
    given_latents, given_context = model.encode(cached)
    assert given_latents is cached['latents'] and given_context is cached['context']

    # Caption dropout draws alike on cached and encoded batches: '' <-> uncond_context.
    model.cond_dropout = 0.5
    model.rng.manual_seed(7)
    _, dropped = model.encode(shapes_collate([dataset[i] for i in range(NUM_SAMPLES)]))
    model.rng.manual_seed(7)
    _, cached_dropped = model.encode(cached)
    torch.testing.assert_close(cached_dropped, dropped)
    changed = (dropped - context).abs().amax(dim=(1, 2)) > 1e-3
    assert 0 < changed.sum() < NUM_SAMPLES


def test_rerun_skips_finished_shards_and_rewrites_missing_ones(tmp_path, capsys):
    precompute(tmp_path)
    shards = [shard_path(tmp_path, k) for k in range(3)]
    before = [(p.stat().st_mtime_ns, p.read_bytes()) for p in shards]
    capsys.readouterr()
    precompute(tmp_path)
    assert '3 done, 0 to write' in capsys.readouterr().out
    assert [(p.stat().st_mtime_ns, p.read_bytes()) for p in shards] == before

    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=r'incomplete: 1 of its files missing \(first '
                                                r'00001\.safetensors\).*rerun'):
        DATASETS.build(dict(type='LatentCacheDataset', root=str(tmp_path)))
    precompute(tmp_path)
    assert '2 done, 1 to write' in capsys.readouterr().out
    assert [(p.stat().st_mtime_ns, p.read_bytes()) for p in shards[::2]] == before[::2]
    assert shards[1].read_bytes() == before[1][1]  # the same encoding again
    assert not list(tmp_path.glob('.*.tmp'))  # no temp file left behind


def test_bad_caches_raise(tmp_path):
    precompute(tmp_path)
    with pytest.raises(ValueError, match=r'other settings \(shard_size differ'):
        precompute(tmp_path, '--shard-size', '5')
    with pytest.raises(FileNotFoundError, match='precompute_cache.py CONFIG --out'):
        DATASETS.build(dict(type='LatentCacheDataset', root=str(tmp_path / 'nothing')))
    cache = DATASETS.build(dict(type='LatentCacheDataset', root=str(tmp_path)))
    assert cache[-1]['key'] == str(NUM_SAMPLES - 1)
    with pytest.raises(IndexError, match='out of range'):
        cache[NUM_SAMPLES]
