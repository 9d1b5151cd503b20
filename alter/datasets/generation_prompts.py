"""Prompts to generate images for, each with its own initial-noise seed (validation).

The same prompts and seeds as the evaluation tools: ``prompts='shapes'`` gives the
Shapes-T2I ``val`` prompts of ``benchmark_prompts`` (with their attribute labels,
which ``AttributeAccuracy`` scores), a path the prompts of a prompt file
(``load_prompts``: COCO captions JSON, CSV/TSV, one prompt per line). Prompt i
samples from the noise of seed ``seed * 100000 + i``.
"""
from typing import List, Optional, Sequence

from torch.utils.data import Dataset

from alter.evaluation.benchmark import benchmark_prompts
from alter.evaluation.prompts import load_prompts
from alter.registry import DATASETS, FUNCTIONS
from alter.utils.cli import InputError


@DATASETS.register_module()
class GenerationPrompts(Dataset):
    """``num_prompts`` prompts; ``dataset[i]`` is a dict: ``caption`` (str), ``seed``
    (int, of the initial noise) and, for Shapes-T2I, ``attributes``.

    Args:
        prompts: ``'shapes'`` or a prompt file.
        num_prompts: how many (the first ones of a file).
        seed: seed of the Shapes-T2I prompts and of the noise seeds.
        caption_column: the caption column of a CSV/TSV file.
    """

    def __init__(self, prompts: Optional[str] = 'shapes', num_prompts: int = 32, seed: int = 0,
                 caption_column: str = 'caption') -> None:
        if prompts is None:
            raise InputError("GenerationPrompts: no prompts given; set prompts (e.g. "
                             "val_dataloader.dataset.prompts) to 'shapes' or a prompt file (COCO "
                             'captions JSON, CSV/TSV with a caption column, or one prompt per line)')
        if not isinstance(num_prompts, int) or num_prompts < 1:
            raise ValueError(f'GenerationPrompts: num_prompts must be a positive int, got '
                             f'{num_prompts!r}')
        if prompts == 'shapes':
            samples, _, seeds = benchmark_prompts(num_prompts, seed)
            self.items = [dict(caption=s['caption'], attributes=s['attributes'], seed=n)
                          for s, n in zip(samples, seeds)]
        else:
            self.items = [dict(caption=p['caption'], seed=seed * 100_000 + i) for i, p in
                          enumerate(load_prompts(prompts, num_prompts, caption_column))]
        self.metainfo = dict(prompts=str(prompts), num_prompts=len(self.items), seed=seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return dict(self.items[index])


@FUNCTIONS.register_module('prompt_collate')
def prompt_collate(batch: Sequence[dict]) -> List[dict]:
    """A batch of ``GenerationPrompts`` items as the list of their dicts (mmengine's
    collates would split the nested attribute labels into lists per key)."""
    return list(batch)
