"""Train the Shapes-T2I attribute classifier (``alter.evaluation.attributes``) on CPU.

    python tools/train_attribute_classifier.py --out checkpoints/attribute_classifier.safetensors

Streams fresh ``train`` renders (no image is seen twice; augmented with blur and colour
jitter, see ``augment``), then reports accuracy on
``val`` renders and on ``heldout`` renders (unseen colour-shape pairs) with every
label scored, and stores the command, settings, accuracies and time in the
weights file's metadata (read it with ``safetensors.safe_open(path, 'pt').metadata()``).
"""
import argparse
import platform
import shlex
import sys
import time

import torch
import torch.nn.functional as F

from alter.datasets.shapes import ShapesT2I, collate
from alter.evaluation.attributes import (AttributeClassifier, load_attribute_classifier, score,
                                         summarise)
from alter.evaluation.weights import save_weights
from alter.utils.render_training import train_on_renders


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='weights file (.safetensors) to write')
    parser.add_argument('--steps', type=int, default=2000)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=3e-3)
    parser.add_argument('--jitter', type=float, default=20.0,
                        help='colour jitter (0-255 RGB units): the largest std of a per-image '
                        'channel offset and of per-pixel noise')
    parser.add_argument('--blur', type=float, default=1.2,
                        help='half the training images are blurred with a Gaussian of '
                        'sigma ~ U(0, blur) pixels')
    parser.add_argument('--eval-samples', type=int, default=2000,
                        help='val and heldout renders to report accuracy on')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    return parser.parse_args()


def augment(images: torch.Tensor, jitter: float, blur: float,
            generator: torch.Generator) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1], half of them blurred (per-image sigma), with a
    random per-image colour offset and pixel noise. Generated images are rarely exact
    renders: the classifier should read slightly soft or off-colour objects (image
    quality is the proxy FID's job), while a wrong colour or shape stays wrong."""
    batch = images.shape[0]
    sigma = torch.rand(batch, generator=generator) * blur
    sigma[torch.rand(batch, generator=generator) < 0.5] = 0
    taps = torch.arange(-2, 3, dtype=images.dtype)  # 5-tap kernel: +-2 px covers sigma <= 1.2
    kernel = torch.exp(-taps ** 2 / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (3B, 5)
    x = images.reshape(1, batch * 3, *images.shape[-2:])
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode='replicate'), kernel[:, None, None, :],
                 groups=batch * 3)  # along rows
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode='replicate'), kernel[:, None, :, None],
                 groups=batch * 3)  # along columns
    # Per-image strength ~ U(0, jitter): clean renders stay in the training distribution.
    scale = torch.rand(batch, 1, 1, 1, generator=generator) * (jitter / 127.5)
    offset = torch.randn(batch, 3, 1, 1, generator=generator) * scale
    noise = torch.randn(images.shape, generator=generator) * scale
    return (x.reshape(images.shape) + offset + noise).clamp(-1, 1)


@torch.no_grad()
def evaluate(model: AttributeClassifier, split: str, num_samples: int, seed: int) -> dict:
    """Accuracies (``summarise``) on ``num_samples`` renders of ``split``, every label scored."""
    dataset = ShapesT2I(split, num_samples, seed=seed)
    results = []
    for start in range(0, num_samples, 250):
        batch = collate([dataset[i] for i in range(start, min(start + 250, num_samples))])
        results += score(model.predict(batch['image']), batch['attributes'], every_label=True)
    return summarise(results)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = AttributeClassifier()
    start = time.time()

    def step_loss(batch: dict):
        losses = model.loss(augment(batch['image'], args.jitter, args.blur, generator),
                            batch['attributes'])
        return sum(losses.values()), losses

    train_seconds = train_on_renders(model, step_loss, args.steps, args.batch_size, args.lr,
                                     args.seed, pct_start=0.1)

    metadata = dict(config=model.config,
                    command=' '.join(shlex.quote(a) for a in ['python'] + sys.argv),
                    settings=vars(args), train_seconds=round(train_seconds, 1),
                    train_images=args.steps * args.batch_size,
                    versions=dict(torch=torch.__version__, python=platform.python_version()))
    save_weights(model, args.out, metadata)
    # Report the saved (fp16) weights, exactly what the metric will load.
    saved = load_attribute_classifier(args.out)
    accuracy = {split: evaluate(saved, split, args.eval_samples, seed=args.seed)
                for split in ('val', 'heldout')}
    total_seconds = time.time() - start
    for split, summary in accuracy.items():
        print(f'{split:8s} ' + '  '.join(f'{k}={v:.4f}' for k, v in summary.items()))
    print(f'train {train_seconds:.1f} s, total {total_seconds:.1f} s '
          f'({args.threads} thread(s)); wrote {args.out}')
    save_weights(model, args.out, dict(metadata, accuracy=accuracy, eval_samples=args.eval_samples,
                                       total_seconds=round(total_seconds, 1)))


if __name__ == '__main__':
    main()
