"""Scoring and showing generated images of the embedded benchmark (demo, study).

``BenchmarkEvaluator`` runs the registered proxy metrics on images generated
for Shapes-T2I prompts; ``grid_figure`` draws prompts x methods.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import Evaluator

from alter.datasets.shapes import ShapesT2I
from alter.evaluation.metrics import DEFAULT_REFERENCE
from alter.registry import METRICS


def benchmark_prompts(num_prompts: int, seed: int = 0) -> Tuple[List[dict], List[str], List[int]]:
    """Shapes-T2I ``val`` items, their captions and one sampling seed per prompt
    (``seed * 100000 + i``): the same prompts and initial noise for every method."""
    prompts = ShapesT2I('val', num_samples=num_prompts, seed=seed)
    samples = [prompts[i] for i in range(len(prompts))]
    return samples, [s['caption'] for s in samples], [seed * 100_000 + i for i in range(len(samples))]


def default_metrics(num_images: int, num_reference: int = DEFAULT_REFERENCE['num_samples']
                    ) -> List[dict]:
    """Proxy FID and KID on EfficientNet-Lite0 features against ``num_reference`` real
    val renders, attribute accuracy and LiT-style alignment; KID subsets fit both sets."""
    reference = dict(DEFAULT_REFERENCE, num_samples=num_reference)
    return [dict(type='ProxyFID', reference=reference),
            dict(type='ProxyKID', reference=reference,
                 subset_size=min(100, num_images, num_reference)),
            dict(type='AttributeAccuracy'), dict(type='AlignmentScore')]


class BenchmarkEvaluator:
    """The proxy metrics, built once and reused for every method.

    Args:
        metrics: ``METRICS`` configs, e.g. ``default_metrics(num_images)``.
    """

    def __init__(self, metrics: Sequence[dict], batch_size: int = 100) -> None:
        self.evaluator = Evaluator([METRICS.build(dict(m)) for m in metrics])
        self.batch_size = batch_size

    def __call__(self, images: torch.Tensor, samples: Sequence[dict],
                 references: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, float]:
        """Scores of ``images`` (N, 3, H, W) in [-1, 1] generated for ``samples``'
        captions (Shapes-T2I items with ``caption`` and ``attributes``).

        ``references``: data-sample key -> (N, 3, H, W) images the paired metrics
        (``PairedFidelity``) compare each image with, e.g. the teacher's images.
        """
        references = references or {}
        if any(len(r) != len(images) for r in references.values()) or len(images) != len(samples):
            raise ValueError(f'{len(images)} images for {len(samples)} prompts and references of '
                             f'{[len(r) for r in references.values()]}: one of each per prompt')
        for start in range(0, len(images), self.batch_size):
            part = range(start, min(start + self.batch_size, len(images)))
            self.evaluator.process(data_samples=[
                dict(image=images[i], caption=samples[i]['caption'],
                     attributes=samples[i]['attributes'],
                     **{key: ref[i] for key, ref in references.items()}) for i in part])
        return self.evaluator.evaluate(len(images))

    def per_image(self) -> Dict[str, np.ndarray]:
        """Per-image scores of the last call: name -> (N,) array (NaN: not asked)."""
        return {name: values for metric in self.evaluator.metrics
                for name, values in getattr(metric, 'per_image', {}).items()}


def grid_figure(reference: torch.Tensor, generated: Dict[str, torch.Tensor],
                captions: Sequence[str], path) -> Path:
    """PNG of prompts (rows) x real render + each method (columns); images in [-1, 1]."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from alter.utils.io import atomic_write

    columns = {'real render': reference, **generated}
    fig, axes = plt.subplots(len(captions), len(columns),
                             figsize=(1.6 * len(columns) + 3.2, 1.6 * len(captions)),
                             squeeze=False)
    for row, caption in enumerate(captions):
        for col, (name, images) in enumerate(columns.items()):
            ax = axes[row][col]
            ax.imshow(((images[row].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(),
                      interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
        axes[row][-1].text(1.08, 0.5, caption, transform=axes[row][-1].transAxes, fontsize=7,
                           va='center', wrap=True)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=110))
    plt.close(fig)
    return path
