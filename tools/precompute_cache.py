"""Precompute autoencoder latents and text context of a config's training data.

    python tools/precompute_cache.py CONFIG --out DIR [--cfg-options k=v ...]
        [--batch-size 16] [--shard-size 1000] [--dtype float32] [--num-workers 0] [--device cuda]

Builds the config's training dataset and the model's frozen autoencoder and text
encoder as training builds them (``model.pretrained``, ``frozen_dtype``), encodes
every sample once and writes shards of ``--shard-size`` samples into DIR (format:
``alter/datasets/latent_cache.py``). Rerun the same command to resume: finished
shards are skipped, unreadable or incomplete ones rewritten. Each shard draws its
autoencoder samples (SD's VAE posterior) from a seed of its own, so a resumed cache
equals an uninterrupted one. Train on it:

    python tools/train.py CONFIG --cfg-options train_dataloader.dataset._delete_=True \\
        train_dataloader.dataset.type=LatentCacheDataset train_dataloader.dataset.root=DIR \\
        train_dataloader.collate_fn.type=default_collate \\
        model.autoencoder=None model.text_encoder=None
"""
import argparse
from typing import List, Tuple

import torch
from mmengine.config import Config, DictAction
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from alter.datasets.latent_cache import (num_shards, open_cache, shard_path, shard_problem,
                                         shard_range, uncond_path, write_shard, write_uncond)
from alter.models.diffusion import LatentDiffusion
from alter.registry import DATASETS
from alter.utils.cli import positive_int, run_tool
from alter.utils.config import load_config

DTYPES = ('float32', 'float16', 'bfloat16')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='training config (train_dataloader.dataset, model)')
    parser.add_argument('--out', required=True, help='cache folder (created, or resumed)')
    parser.add_argument('--batch-size', type=positive_int, default=16,
                        help='samples per encoder call')
    parser.add_argument('--shard-size', type=positive_int, default=1000,
                        help='samples per shard file')
    parser.add_argument('--dtype', choices=DTYPES, default='float32',
                        help='stored dtype (training reads float32 back)')
    parser.add_argument('--num-workers', type=int, default=0, help='DataLoader workers')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, e.g. train_dataloader.dataset.shards=...')
    return parser.parse_args(argv)


def conditioning_model(cfg: Config) -> LatentDiffusion:
    """The config's frozen autoencoder and text encoder inside a ``LatentDiffusion``,
    with the same ``pretrained`` defaults, dtype and size checks as in training; the
    UNet is dropped after the checks. Captions are encoded as written."""
    model = LatentDiffusion.from_config(cfg.model, cond_dropout=0.0)
    if model.autoencoder is None or model.text_encoder is None:
        raise ValueError('precomputing needs model.autoencoder and model.text_encoder in the '
                         f'config; found {cfg.model.get("autoencoder")!r} and '
                         f'{cfg.model.get("text_encoder")!r}')
    del model.unet
    return model


def encode_shard(model: LatentDiffusion, dataset: Dataset, indices: range, args,
                 progress: tqdm) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """Latents (n, C, h, w), context (n, L, D) and ids of ``dataset[indices]``."""
    model.rng.manual_seed(indices.start)  # the shard's own seed: see the module docstring
    loader = DataLoader(Subset(dataset, indices), batch_size=args.batch_size,
                        num_workers=args.num_workers, collate_fn=list)
    dtype = getattr(torch, args.dtype)
    latents, context, keys = [], [], []
    for samples in loader:
        images = torch.stack([s['image'] for s in samples])  # (B, 3, R, R)
        if images.shape[-2:] != (model.resolution, model.resolution):
            raise ValueError(f'the dataset gives {tuple(images.shape[-2:])} px images but '
                             f'model.resolution is {model.resolution}; make the dataset\'s '
                             'transform resolution and model.resolution agree')
        data = model.data_preprocessor(dict(image=images, caption=[s['caption'] for s in samples]))
        batch_latents, batch_context = model.encode(data)
        latents.append(batch_latents.to(dtype).cpu())
        context.append(batch_context.to(dtype).cpu())
        # Text-image datasets name their samples; others (Shapes-T2I) go by index.
        first = indices.start + len(keys)
        keys += [str(s.get('key', first + i)) for i, s in enumerate(samples)]
        progress.update(len(samples))
    return torch.cat(latents), torch.cat(context), keys


def shards_to_write(out: str, total: int, shard_size: int) -> List[int]:
    """Shards missing from ``out``, or there but unreadable or incomplete (said so)."""
    todo = []
    for k in range(num_shards(total, shard_size)):
        problem = shard_problem(shard_path(out, k), len(shard_range(k, shard_size, total)))
        if problem is not None:
            todo.append(k)
            if problem != 'missing':
                print(f'{shard_path(out, k)} is {problem}: rewriting it')
    return todo


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    total = len(dataset)
    shards = num_shards(total, args.shard_size)
    open_cache(args.out, dict(
        num_samples=total, shard_size=args.shard_size, dtype=args.dtype,
        dataset=cfg.train_dataloader.dataset.to_dict(),
        model={k: cfg.model.get(k) for k in ('pretrained', 'autoencoder', 'text_encoder',
                                             'frozen_dtype', 'resolution')}))
    todo = shards_to_write(args.out, total, args.shard_size)
    print(f'{total} samples in {shards} shards of {args.shard_size}: '
          f'{shards - len(todo)} done, {len(todo)} to write into {args.out}')
    uncond_done = shard_problem(uncond_path(args.out), None) is None
    if not todo and uncond_done:
        return
    model = conditioning_model(cfg).to(args.device)
    if not uncond_done:  # what caption dropout swaps in during training
        write_uncond(args.out, model.text_encoder(['']).to(getattr(torch, args.dtype)).cpu())
    ranges = {k: shard_range(k, args.shard_size, total) for k in todo}
    done = total - sum(map(len, ranges.values()))
    with tqdm(total=total, initial=done, unit='sample', desc='encoding') as progress:
        for k, indices in ranges.items():
            write_shard(shard_path(args.out, k),
                        *encode_shard(model, dataset, indices, args, progress))


if __name__ == '__main__':
    run_tool(main)
