"""Train the LiT-style text-image alignment scorer (``alter.evaluation.alignment``) on CPU.

    python tools/train_alignment_scorer.py --out checkpoints/alignment_scorer.safetensors

Frozen EfficientNet-Lite0 features of Shapes-T2I ``train`` and ``val`` renders are
computed once and cached (``alter.evaluation.features.cached_dataset_features``);
MiniLM sentence embeddings of the captions are recomputed (seconds). Reports, on
``val`` renders, top-1 retrieval among groups of ``--group`` (both directions),
the mean score of matching and of mismatched pairs, and how often an image's
caption scores above the same caption with its relation reversed; stores the
command, settings, numbers and time in the weights file's metadata.
"""
import argparse
import dataclasses
import platform
import shlex
import sys
import time

import torch

from alter.datasets.shapes import ShapesT2I, caption
from alter.evaluation.alignment import (AlignmentScorer, SentenceEmbedder, load_alignment_scorer,
                                        retrieval_accuracy)
from alter.evaluation.features import EfficientNetLite0Features, cached_dataset_features
from alter.evaluation.weights import save_weights

REVERSED = {'left of': 'right of', 'right of': 'left of', 'above': 'below', 'below': 'above'}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='weights file (.safetensors) to write')
    parser.add_argument('--train-samples', type=int, default=4000)
    parser.add_argument('--val-samples', type=int, default=2000,
                        help='val renders; the default is the metrics\' reference set, whose '
                        'cached features are then shared')
    parser.add_argument('--group', type=int, default=100, help='retrieval candidates per query')
    parser.add_argument('--dim', type=int, default=256, help='shared embedding size')
    parser.add_argument('--epochs', type=int, default=60)
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--weight-decay', type=float, default=0.05)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--cache-dir', help='feature cache (default $ALTER_CACHE/features)')
    return parser.parse_args()


def split_data(split: str, num_samples: int, seed: int, extractor: EfficientNetLite0Features,
               embedder: SentenceEmbedder, cache_dir: str) -> dict:
    """Cached image features (N, 1280), caption embeddings (N, 384), captions and the
    captions with reversed relation (None for one object) of a Shapes-T2I split."""
    cfg = dict(type='ShapesT2I', split=split, num_samples=num_samples, seed=seed)
    dataset = ShapesT2I(split, num_samples, seed=seed)
    scenes = [dataset.scene(i) for i in range(num_samples)]
    captions = [caption(s) for s in scenes]
    reversed_captions = [None if s.relation is None else
                         caption(dataclasses.replace(s, relation=REVERSED[s.relation]))
                         for s in scenes]
    return dict(image=torch.from_numpy(cached_dataset_features(extractor, cfg, cache_dir)),
                text=torch.cat([embedder(captions[i:i + 500])
                                for i in range(0, num_samples, 500)]),
                captions=captions, reversed_captions=reversed_captions)


@torch.no_grad()
def evaluate(scorer: AlignmentScorer, data: dict, embedder: SentenceEmbedder,
             group: int) -> dict:
    """Retrieval among consecutive groups of ``group`` val pairs, mean matching and
    mismatched (next image's caption) scores, and the reversed-relation check."""
    image, text, captions = data['image'], data['text'], data['captions']
    hits = [retrieval_accuracy(scorer.similarity(image[s:s + group], text[s:s + group]),
                               captions[s:s + group])
            for s in range(0, len(captions) - group + 1, group)]
    pairs = [i for i, c in enumerate(data['reversed_captions']) if c is not None]
    reversed_text = embedder([data['reversed_captions'][i] for i in pairs])
    return dict(
        **{f'top1_{k}': sum(h[k] for h in hits) / len(hits) for k in hits[0]},
        groups=len(hits),
        score_matching=scorer(image, text).mean().item(),
        score_mismatched=scorer(image, text.roll(1, 0)).mean().item(),
        relation_reversal_accuracy=(scorer(image[pairs], text[pairs])
                                    > scorer(image[pairs], reversed_text)).float().mean().item())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    extractor, embedder = EfficientNetLite0Features(), SentenceEmbedder()
    train = split_data('train', args.train_samples, args.seed, extractor, embedder, args.cache_dir)
    val = split_data('val', args.val_samples, args.seed, extractor, embedder, args.cache_dir)
    feature_seconds = time.time() - start
    print(f'features: {feature_seconds:.1f} s', flush=True)

    scorer = AlignmentScorer(dim=args.dim)
    scorer.image_mean.copy_(train['image'].mean(0))
    scorer.image_std.copy_(train['image'].std(0).clamp_min(1e-6))
    ids = {c: i for i, c in enumerate(dict.fromkeys(train['captions']))}
    caption_ids = torch.tensor([ids[c] for c in train['captions']])
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    steps = args.epochs * (args.train_samples // args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for epoch in range(args.epochs):
        order = torch.randperm(args.train_samples, generator=generator)
        for first in range(0, args.train_samples - args.batch_size + 1, args.batch_size):
            rows = order[first:first + args.batch_size]
            losses = scorer.loss(train['image'][rows], train['text'][rows], caption_ids[rows])
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f'epoch {epoch:3d}  loss={loss.item():.4f}  '
                  f'1/T={scorer.log_scale.exp().item():.1f}', flush=True)
    train_seconds = time.time() - start - feature_seconds

    metadata = dict(config=scorer.config,
                    command=' '.join(shlex.quote(a) for a in ['python'] + sys.argv),
                    settings=vars(args), feature_seconds=round(feature_seconds, 1),
                    train_seconds=round(train_seconds, 1),
                    versions=dict(torch=torch.__version__, python=platform.python_version()))
    save_weights(scorer, args.out, metadata)
    # Report the saved (fp16) weights, exactly what the metric will load.
    results = evaluate(load_alignment_scorer(args.out), val, embedder, args.group)
    total_seconds = time.time() - start
    print('val ' + '  '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                             for k, v in results.items()))
    print(f'features {feature_seconds:.1f} s, train {train_seconds:.1f} s, total '
          f'{total_seconds:.1f} s ({args.threads} thread(s)); wrote {args.out}')
    save_weights(scorer, args.out, dict(metadata, val=results,
                                        total_seconds=round(total_seconds, 1)))


if __name__ == '__main__':
    main()
