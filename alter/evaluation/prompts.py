"""Prompt sets for evaluation, read from the files papers use.

``load_prompts(path)`` returns one dict per prompt with ``caption`` (and
``image_id`` for COCO), from:

* COCO captions JSON (``captions_val2014.json``, ``captions_val2017.json``): one caption
  per image — the first annotation of each image in file order, images in id order —
  the usual "30k COCO-2014 / 5k COCO-2017 prompts" selection;
* CSV or TSV with a caption column (``--caption-column``, default ``caption``);
* a text file with one prompt per line (blank lines skipped).

Every file is read as UTF-8; a file that is not, or does not have its format's
structure, raises ``InputError`` naming the file and the line or entry.
"""
import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Union

from alter.utils.cli import InputError

PROMPT_FORMATS = ('.json', '.csv', '.tsv', '.txt')
COCO_FORMAT = 'COCO captions JSON ({"annotations": [{"image_id": ..., "caption": ...}, ...]})'


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding='utf-8')
    except UnicodeDecodeError as error:
        raise InputError(f'{path} is not UTF-8 text ({error.reason} at byte {error.start}); '
                         'save it as UTF-8, e.g. iconv -f latin1 -t utf-8') from None


def _coco(path: Path) -> List[Dict]:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as error:
        raise InputError(f'{path} is not valid JSON ({error}); expected {COCO_FORMAT}') from None
    if not isinstance(data, dict) or not isinstance(data.get('annotations'), list):
        raise InputError(f'{path}: expected {COCO_FORMAT}')
    first: Dict[int, str] = {}
    for k, ann in enumerate(data['annotations']):
        if not (isinstance(ann, dict) and isinstance(ann.get('caption'), str)
                and 'image_id' in ann):
            raise InputError(f'{path}: annotation {k} has no "image_id" and "caption" string '
                             f'(found {sorted(ann) if isinstance(ann, dict) else ann!r}); expected '
                             f'{COCO_FORMAT}, as in captions_val2014.json (instances_*.json '
                             'hold no captions)')
        first.setdefault(ann['image_id'], ann['caption'].strip())
    return [dict(caption=first[i], image_id=i) for i in sorted(first)]


def _table(path: Path, column: str) -> List[Dict]:
    rows = csv.reader(io.StringIO(_text(path), newline=''),
                      delimiter='\t' if path.suffix.lower() == '.tsv' else ',')
    header = next(rows, [])
    if column not in header:
        raise InputError(f'{path} has no column {column!r} (columns: {header}); name the '
                         'caption column with --caption-column')
    prompts = []
    for row in filter(None, rows):  # blank lines are empty rows
        if len(row) != len(header):
            raise InputError(f'{path}, line {rows.line_num}: {len(row)} fields where the header '
                             f'has {len(header)}; quote fields that contain the delimiter')
        prompts.append(dict(caption=row[header.index(column)].strip()))
    return prompts


def _lines(path: Path) -> List[Dict]:
    return [dict(caption=line.strip()) for line in _text(path).splitlines() if line.strip()]


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
        raise InputError(f'{path}: unknown prompt file type {suffix!r}; expected one of '
                         f'{PROMPT_FORMATS} (COCO captions JSON, CSV/TSV, one prompt per line)')
    if not prompts:
        raise InputError(f'{path} holds no prompts')
    if limit is not None and limit > len(prompts):
        raise InputError(f'{limit} prompts asked for but {path} holds {len(prompts)}')
    return prompts[:limit]
