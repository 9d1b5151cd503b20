"""Prompt sets for evaluation, read from the files papers use.

``load_prompts(path)`` returns one dict per prompt with ``caption`` (and
``image_id`` for COCO), from:

* COCO captions JSON (``captions_val2014.json``, ``captions_val2017.json``): one caption
  per image — the first annotation of each image in file order, images in id order —
  the usual "30k COCO-2014 / 5k COCO-2017 prompts" selection;
* CSV or TSV with a caption column (``--caption-column``, default ``caption``);
* a text file with one prompt per line (blank lines skipped).
"""
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Union

PROMPT_FORMATS = ('.json', '.csv', '.tsv', '.txt')


def _coco(path: Path) -> List[Dict]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get('annotations'), list):
        raise ValueError(f'{path}: expected COCO captions JSON with an "annotations" list of '
                         '{"image_id": ..., "caption": ...}')
    first: Dict[int, str] = {}
    for ann in data['annotations']:
        first.setdefault(ann['image_id'], ann['caption'].strip())
    return [dict(caption=first[i], image_id=i) for i in sorted(first)]


def _table(path: Path, column: str) -> List[Dict]:
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f, delimiter='\t' if path.suffix.lower() == '.tsv' else ',')
        if column not in (reader.fieldnames or []):
            raise ValueError(f'{path} has no column {column!r} (columns: {reader.fieldnames}); '
                             'name the caption column with --caption-column')
        return [dict(caption=row[column].strip()) for row in reader]


def _lines(path: Path) -> List[Dict]:
    return [dict(caption=line.strip())
            for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def load_prompts(path: Union[str, Path], limit: Optional[int] = None,
                 caption_column: str = 'caption') -> List[Dict]:
    """The first ``limit`` prompts of the file (all if None), as ``{'caption': ...}`` dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'prompt file not found: {path}')
    suffix = path.suffix.lower()
    if suffix == '.json':
        prompts = _coco(path)
    elif suffix in ('.csv', '.tsv'):
        prompts = _table(path, caption_column)
    elif suffix == '.txt':
        prompts = _lines(path)
    else:
        raise ValueError(f'{path}: unknown prompt file type {suffix!r}; expected one of '
                         f'{PROMPT_FORMATS} (COCO captions JSON, CSV/TSV, one prompt per line)')
    if not prompts:
        raise ValueError(f'{path} holds no prompts')
    if limit is not None and limit > len(prompts):
        raise ValueError(f'{limit} prompts asked for but {path} holds {len(prompts)}')
    return prompts[:limit]
