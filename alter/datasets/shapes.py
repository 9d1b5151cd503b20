"""Shapes-T2I: a seeded, procedural, captioned 32x32 image dataset.

The project's small offline text-to-image benchmark. Each image holds one or
two coloured shapes on a plain or gradient background, with a templated
caption and exact labels:

    "an orange star to the left of a small blue circle on a white background"

Sample ``i`` of a split is drawn from its own RNG seeded by
``(seed, split, i)``, so any index renders on its own, in any order, and
DataLoader workers agree. Labels come from ``attributes``, never from parsing
captions; the vocabularies below fix the class index of every label (its
position in the tuple / dict).

Compositional generalisation: a fixed set of (colour, shape) pairs,
``HELDOUT_PAIRS``, never appears in ``train`` or ``val``; every ``heldout``
image contains at least one of them.

Images are rendered with numpy at ``SUPERSAMPLE``x resolution and
box-downsampled (anti-aliasing), then quantised to uint8 like a stored image.
The per-sample RNG uses numpy's ``Generator`` stream; the golden captions in
``tests/test_shapes_dataset.py`` catch a numpy release that changes it.
"""
import math
import operator
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from alter.registry import DATASETS, FUNCTIONS

RGB = Tuple[int, int, int]

IMAGE_SIZE = 32  # pixels per side
SUPERSAMPLE = 4  # sub-pixels per pixel side for anti-aliasing
SPLITS = ('train', 'val', 'heldout')  # position = split id in the RNG seed: append only

# Named object colours (position = class index), chosen to stay apart at 32 px.
COLOURS: Dict[str, RGB] = {
    'red': (220, 30, 30),
    'orange': (255, 140, 0),
    'yellow': (250, 220, 30),
    'green': (30, 170, 60),
    'blue': (40, 80, 230),
    'purple': (150, 50, 200),
    'white': (250, 250, 250),
    'black': (10, 10, 10),
}

# Half-extent of an object's bounding square in pixels (position = class index).
SIZES: Dict[str, float] = {'small': 4.5, 'large': 7.0}

# Relation label of objects[0] to objects[1] -> caption phrase (position = class index).
RELATIONS: Dict[str, str] = {
    'left of': 'to the left of',
    'right of': 'to the right of',
    'above': 'above',
    'below': 'below',
}

# Background name -> (top, bottom) colour of a vertical gradient; plain when equal.
BACKGROUNDS: Dict[str, Tuple[RGB, RGB]] = {
    'white': ((245, 245, 245), (245, 245, 245)),
    'gray': ((128, 128, 128), (128, 128, 128)),
    'black': ((20, 20, 20), (20, 20, 20)),
    'light gradient': ((250, 250, 250), (190, 200, 215)),
    'dark gradient': ((70, 70, 95), (15, 15, 25)),
}

# An object colour may go on a background only if it stays this far (Euclidean
# RGB) from every background pixel, so no object is ever camouflaged.
MIN_CONTRAST = 80.0

MARGIN = 1.0  # pixels kept free between an object and the image border
GAP = 1.0  # pixels kept free between two objects along their relation's axis
SIZE_MENTION_P = 0.5  # probability that a caption names an object's size
HELDOUT_SEED = 20240917  # fixes HELDOUT_PAIRS; changing it changes the benchmark


# Shape masks on normalised coordinates: (u, v) = (x - cx, y - cy) / half-extent,
# image axes (v points down); every shape lies inside [-1, 1]^2 and contains the
# disc of radius 0.3 around (0, 0), so its centre pixel is fully covered.
def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # 0.85 rather than 1: a full-extent square looks much bigger than the circle.
    return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Apex up at v = -0.9, base at v = 0.85, base half-width 1 (about equilateral).
    return (v <= 0.85) & (np.abs(u) <= (v + 0.9) / 1.75)


def _star_edge() -> Tuple[float, float]:
    """Normal angle and origin distance of one star edge (outer radius 1, inner 0.45)."""
    inner = 0.45
    # Edge from the outer vertex at angle 0 to the inner vertex at angle 36 deg.
    x1, y1 = 1.0, 0.0
    x2, y2 = inner * math.cos(math.pi / 5), inner * math.sin(math.pi / 5)
    nx, ny = y2 - y1, x1 - x2
    norm = math.hypot(nx, ny)
    return math.atan2(ny, nx), (nx * x1 + ny * y1) / norm


_STAR_NORMAL, _STAR_EDGE = _star_edge()


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five-pointed star, one point up: fold the angle into the first half-sector
    # [0, 36 deg] and compare the radius with the edge there (polar line equation).
    phi = np.mod(np.arctan2(u, -v), 2 * math.pi / 5)
    phi = np.minimum(phi, 2 * math.pi / 5 - phi)
    return np.hypot(u, v) * np.cos(phi - _STAR_NORMAL) <= _STAR_EDGE


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 spans x in [-1.139, 1.139], y in [-1, 1.236];
    # scale by 1.139 and centre vertically so it fills [-1, 1]^2 (y points up).
    x = 1.139 * u
    y = 0.118 - 1.139 * v
    r = x * x + y * y - 1.0
    return r * r * r - x * x * y * y * y <= 0.0


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Plus sign with arms 0.6 wide.
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))


_INSIDE: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'circle': _circle,
    'square': _square,
    'triangle': _triangle,
    'star': _star,
    'heart': _heart,
    'cross': _cross,
}
SHAPES: Tuple[str, ...] = tuple(_INSIDE)  # position = class index


def _draw_heldout_pairs() -> Tuple[Tuple[str, str], ...]:
    """7 of the 48 (colour, shape) pairs (~15 %), each colour at most once and
    each shape at most twice, so every held-out colour and shape is still seen
    in training with other partners."""
    rng = np.random.default_rng(HELDOUT_SEED)
    colours = rng.permutation(len(COLOURS))[:7]
    shapes = rng.permutation(np.repeat(np.arange(len(SHAPES)), 2))[:7]
    names = tuple(COLOURS)
    return tuple(sorted((names[c], SHAPES[s]) for c, s in zip(colours, shapes)))


HELDOUT_PAIRS: Tuple[Tuple[str, str], ...] = _draw_heldout_pairs()
_ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
_TRAIN_PAIRS = tuple(p for p in _ALL_PAIRS if p not in HELDOUT_PAIRS)


def _background_image(name: str) -> np.ndarray:
    """float32 (IMAGE_SIZE, IMAGE_SIZE, 3) in [0, 255]: the vertical gradient."""
    top, bottom = (np.asarray(c, np.float32) for c in BACKGROUNDS[name])
    t = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE  # row centres
    column = top + t[:, None] * (bottom - top)  # (H, 3)
    return np.repeat(column[:, None, :], IMAGE_SIZE, axis=1)


_BACKGROUND_IMAGES = {name: _background_image(name) for name in BACKGROUNDS}
# Background -> colours allowed on it (see MIN_CONTRAST).
_ALLOWED_COLOURS = {
    bg: frozenset(
        c for c, rgb in COLOURS.items()
        if np.linalg.norm(image.reshape(-1, 3) - np.asarray(rgb, np.float32), axis=1).min()
        >= MIN_CONTRAST)
    for bg, image in _BACKGROUND_IMAGES.items()
}


@dataclass(frozen=True)
class ShapeObject:
    """One object: labels plus where it is drawn.

    ``centre`` is (x, y) in pixels, y pointing down, of the object's bounding
    square of half-extent ``SIZES[size]``.
    """

    shape: str
    colour: str
    size: str
    centre: Tuple[float, float]
    size_in_caption: bool


@dataclass(frozen=True)
class Scene:
    """Everything a sample is made of; ``relation`` is of objects[0] to objects[1]."""

    objects: Tuple[ShapeObject, ...]
    relation: Optional[str]
    background: str


def _article(word: str) -> str:
    # Spelling suffices: no word in the vocabularies sounds unlike it starts.
    return 'an' if word[0] in 'aeiou' else 'a'


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f'unknown Shapes-T2I split {split!r}; valid splits: {", ".join(SPLITS)}')
    return SPLITS.index(split)


def _place_pair(rng: np.random.Generator, half_a: float, half_b: float,
                relation: str) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """Centres (x, y) of two objects with half-extents ``half_a``, ``half_b`` such
    that A ``relation`` B holds with a gap, and the off-axis offset stays at most
    half the on-axis distance (so 'left of' never reads as 'above')."""
    # Along the relation's axis: [MARGIN | A | GAP | B | MARGIN] plus free space
    # split uniformly (sorted uniforms = uniform point of the simplex).
    low, high = (half_a, half_b) if relation in ('left of', 'above') else (half_b, half_a)
    free = IMAGE_SIZE - 2 * MARGIN - GAP - 2 * (half_a + half_b)
    f1, f2 = np.sort(rng.random(2)) * free
    near = MARGIN + f1 + low  # the object with the smaller coordinate
    far = near + low + GAP + (f2 - f1) + high
    along_a, along_b = (near, far) if relation in ('left of', 'above') else (far, near)
    # Across: A anywhere, B within half the on-axis distance of A.
    across_a = rng.uniform(MARGIN + half_a, IMAGE_SIZE - MARGIN - half_a)
    reach = 0.5 * (far - near)
    across_b = rng.uniform(max(MARGIN + half_b, across_a - reach),
                           min(IMAGE_SIZE - MARGIN - half_b, across_a + reach))
    if relation in ('left of', 'right of'):
        return (along_a, across_a), (along_b, across_b)
    return (across_a, along_a), (across_b, along_b)


def sample_scene(seed: int, split: str, index: int) -> Scene:
    """The scene of sample ``index`` of ``split``; no rendering (microseconds)."""
    rng = np.random.default_rng([seed, _check_split(split), index])
    num_objects = 1 + int(rng.integers(2))
    pools = [_ALL_PAIRS if split == 'heldout' else _TRAIN_PAIRS] * num_objects
    if split == 'heldout':
        pools[int(rng.integers(num_objects))] = HELDOUT_PAIRS
    pairs: List[Tuple[str, str]] = []
    for pool in pools:
        # Distinct colours keep captions unambiguous and objects separable by colour.
        options = [p for p in pool if p[0] not in {c for c, _ in pairs}]
        pairs.append(options[int(rng.integers(len(options)))])
    sizes = [tuple(SIZES)[int(i)] for i in rng.integers(len(SIZES), size=num_objects)]
    mentions = rng.random(num_objects) < SIZE_MENTION_P
    backgrounds = [bg for bg, ok in _ALLOWED_COLOURS.items() if all(c in ok for c, _ in pairs)]
    background = backgrounds[int(rng.integers(len(backgrounds)))]

    if num_objects == 1:
        half = SIZES[sizes[0]]
        centres = [tuple(rng.uniform(MARGIN + half, IMAGE_SIZE - MARGIN - half, size=2))]
        relation = None
    else:
        relation = tuple(RELATIONS)[int(rng.integers(len(RELATIONS)))]
        centres = _place_pair(rng, SIZES[sizes[0]], SIZES[sizes[1]], relation)
    objects = tuple(
        ShapeObject(shape=s, colour=c, size=z, centre=(float(x), float(y)), size_in_caption=bool(m))
        for (c, s), z, (x, y), m in zip(pairs, sizes, centres, mentions))
    return Scene(objects=objects, relation=relation, background=background)


def caption(scene: Scene) -> str:
    """Templated caption, e.g. 'a large red square on a dark gradient background'."""
    phrases = []
    for obj in scene.objects:
        words = ([obj.size] if obj.size_in_caption else []) + [obj.colour, obj.shape]
        phrases.append(' '.join([_article(words[0])] + words))
    text = phrases[0] if scene.relation is None else \
        f'{phrases[0]} {RELATIONS[scene.relation]} {phrases[1]}'
    return f'{text} on {_article(scene.background)} {scene.background} background'


def render(scene: Scene) -> np.ndarray:
    """uint8 (IMAGE_SIZE, IMAGE_SIZE, 3) RGB image of ``scene``."""
    image = _BACKGROUND_IMAGES[scene.background].copy()  # float32 (H, W, 3)
    for obj in scene.objects:
        half = SIZES[obj.size]
        cx, cy = obj.centre
        # Only the object's bounding square is evaluated; placement keeps it on the canvas.
        x0, x1 = math.floor(cx - half), math.ceil(cx + half)
        y0, y1 = math.floor(cy - half), math.ceil(cy + half)
        xs = x0 + (np.arange((x1 - x0) * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
        ys = y0 + (np.arange((y1 - y0) * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
        inside = _INSIDE[obj.shape]((xs[None, :] - cx) / half, (ys[:, None] - cy) / half)
        # Box-downsample the sub-pixel mask to per-pixel coverage, (h, w) in [0, 1].
        coverage = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(
            axis=(1, 3), dtype=np.float32)
        patch = image[y0:y1, x0:x1]
        patch += coverage[..., None] * (np.asarray(COLOURS[obj.colour], np.float32) - patch)
    return np.rint(image).astype(np.uint8)


def attributes(scene: Scene) -> dict:
    """Exact labels: ``objects`` (list of dicts with shape, colour, size,
    size_in_caption, centre), ``relation`` (None for one object), ``background``."""
    return {
        'objects': [dict(shape=o.shape, colour=o.colour, size=o.size,
                         size_in_caption=o.size_in_caption, centre=o.centre)
                    for o in scene.objects],
        'relation': scene.relation,
        'background': scene.background,
    }


def attribute_indices(attrs: dict) -> dict:
    """Class indices of ``attributes(...)`` in the vocabularies: ``shape``,
    ``colour``, ``size`` (lists, one per object), ``relation`` (int or None),
    ``background`` (int). Reads labels only; captions are never parsed."""
    objects = attrs['objects']
    return {
        'shape': [SHAPES.index(o['shape']) for o in objects],
        'colour': [tuple(COLOURS).index(o['colour']) for o in objects],
        'size': [tuple(SIZES).index(o['size']) for o in objects],
        'relation': (None if attrs['relation'] is None
                     else tuple(RELATIONS).index(attrs['relation'])),
        'background': tuple(BACKGROUNDS).index(attrs['background']),
    }


@FUNCTIONS.register_module('shapes_collate')
def collate(batch: Sequence[dict]) -> dict:
    """Batch samples: ``image`` (B, 3, H, W), ``index`` (B,) int64, ``caption`` and
    ``attributes`` as lists (torch's default collate rejects their ragged
    object lists and ``relation=None``)."""
    return {
        'image': torch.stack([b['image'] for b in batch]),
        'caption': [b['caption'] for b in batch],
        'attributes': [b['attributes'] for b in batch],
        'index': torch.tensor([b['index'] for b in batch], dtype=torch.int64),
    }


@DATASETS.register_module()
class ShapesT2I(Dataset):
    """Shapes-T2I split of ``num_samples`` procedural captioned images.

    Args:
        split: ``train``, ``val`` (same distribution, other seeds) or
            ``heldout`` (each image has a pair of ``HELDOUT_PAIRS``).
        num_samples: length of the split.
        seed: non-negative integer; with ``split`` and the index it fixes a sample.

    ``dataset[i]`` is a dict: ``image`` float32 (3, 32, 32) in [-1, 1],
    ``caption`` str, ``attributes`` dict (see ``attributes``), ``index`` int.
    Batch with ``collate``.
    """

    def __init__(self, split: str = 'train', num_samples: int = 10_000, seed: int = 0) -> None:
        _check_split(split)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f'num_samples must be a positive int, got {num_samples!r}')
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f'seed must be a non-negative int (numpy SeedSequence), got {seed!r}')
        self.split = split
        self.num_samples = num_samples
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def scene(self, index: int) -> Scene:
        """The scene of sample ``index`` without rendering it."""
        index = operator.index(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f'index {index} out of range for ShapesT2I of length {self.num_samples}')
        return sample_scene(self.seed, self.split, index)

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        pixels = torch.from_numpy(render(scene)).permute(2, 0, 1)  # uint8 (3, H, W)
        return {
            'image': pixels.to(torch.float32) / 127.5 - 1.0,
            'caption': caption(scene),
            'attributes': attributes(scene),
            'index': operator.index(index),
        }

    def captions(self) -> List[str]:
        """All captions in index order, without rendering (~10 us each)."""
        return [caption(self.scene(i)) for i in range(self.num_samples)]
