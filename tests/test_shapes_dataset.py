"""Shapes-T2I: determinism, splits, caption grammar, and that pictures match labels."""
import dataclasses
import re
from typing import Tuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from alter.datasets.shapes import (BACKGROUNDS, COLOURS, HELDOUT_PAIRS, IMAGE_SIZE, MARGIN,
                                   MIN_CONTRAST, RELATIONS, SHAPES, SIZES, Scene, ShapeObject,
                                   ShapesT2I, attribute_indices, caption, collate, render)
from alter.registry import DATASETS


def _pairs(scene: Scene) -> set:
    return {(o.colour, o.shape) for o in scene.objects}


def _bare(scene: Scene) -> np.ndarray:
    """The scene's background alone, uint8 (H, W, 3)."""
    return render(dataclasses.replace(scene, objects=()))


def _colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    """(H, W) bool: pixels (mostly) covered by an object of ``colour``."""
    distance = np.linalg.norm(image.astype(np.float32) - np.asarray(COLOURS[colour]), axis=-1)
    return distance < 40  # < MIN_CONTRAST / 2: never background, never another colour


def test_heldout_pairs_are_pinned_and_balanced():
    # Pinned: the benchmark's split must not move with a numpy release.
    assert HELDOUT_PAIRS == (('black', 'cross'), ('blue', 'star'), ('green', 'triangle'),
                             ('orange', 'circle'), ('red', 'square'), ('white', 'cross'),
                             ('yellow', 'heart'))
    assert 0.1 <= len(HELDOUT_PAIRS) / (len(COLOURS) * len(SHAPES)) <= 0.2
    colours = [c for c, _ in HELDOUT_PAIRS]
    shapes = [s for _, s in HELDOUT_PAIRS]
    assert len(set(colours)) == len(colours)
    assert max(shapes.count(s) for s in SHAPES) <= 2


def test_golden_captions():
    assert ShapesT2I('train', 3, seed=0).captions() == [
        'a small purple square above a green star on a white background',
        'a small green heart to the left of a large red circle on a black background',
        'a purple circle on a black background']


def test_build_from_registry_sample_format_and_collate():
    dataset = DATASETS.build(dict(type='ShapesT2I', split='val', num_samples=4, seed=3))
    assert isinstance(dataset, ShapesT2I) and len(dataset) == 4
    sample = dataset[2]
    image = sample['image']
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    # uint8 pixels mapped exactly: x = k / 127.5 - 1 for integer k in [0, 255].
    k = (image + 1) * 127.5
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert isinstance(sample['caption'], str) and sample['index'] == 2
    assert set(sample['attributes']) == {'objects', 'relation', 'background'}

    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate)))
    assert batch['image'].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch['index'].tolist() == [0, 1, 2, 3]
    assert batch['caption'] == dataset.captions()


def test_same_seed_same_samples_other_seed_or_split_differs():
    def dump(split: str, seed: int) -> Tuple[torch.Tensor, list]:
        dataset = ShapesT2I(split, 16, seed=seed)
        return torch.stack([s['image'] for s in dataset]), [s['caption'] for s in dataset]

    images, captions = dump('train', 5)
    again_images, again_captions = dump('train', 5)
    assert torch.equal(images, again_images) and captions == again_captions
    for split, seed in (('train', 6), ('val', 5)):
        other_images, other_captions = dump(split, seed)
        assert other_captions != captions
        assert not torch.equal(other_images, images)


def test_any_index_renders_alone_as_when_iterating():
    iterated = list(ShapesT2I('heldout', 10, seed=2))  # iteration stops at IndexError
    assert len(iterated) == 10
    fresh = ShapesT2I('heldout', 10, seed=2)
    for index in (7, 3, 9, 0):
        alone = fresh[index]
        assert torch.equal(alone['image'], iterated[index]['image'])
        assert alone['caption'] == iterated[index]['caption']
        assert alone['attributes'] == iterated[index]['attributes']


def test_heldout_pairs_never_in_train_or_val():
    seen = set()
    for split, n in (('train', 2000), ('val', 500)):
        dataset = ShapesT2I(split, n, seed=0)
        for i in range(n):
            seen |= _pairs(dataset.scene(i))
    assert not seen & set(HELDOUT_PAIRS)
    # ...while every other pair does occur.
    assert len(seen) == len(COLOURS) * len(SHAPES) - len(HELDOUT_PAIRS)


def test_every_heldout_sample_has_a_heldout_pair():
    dataset = ShapesT2I('heldout', 1000, seed=0)
    seen = set()
    for i in range(len(dataset)):
        pairs = _pairs(dataset.scene(i))
        assert pairs & set(HELDOUT_PAIRS), pairs
        seen |= pairs & set(HELDOUT_PAIRS)
    assert seen == set(HELDOUT_PAIRS)


def test_caption_template():
    star = ShapeObject('star', 'orange', 'large', (8.0, 16.0), size_in_caption=False)
    circle = ShapeObject('circle', 'blue', 'small', (24.0, 16.0), size_in_caption=True)
    assert caption(Scene((star, circle), 'left of', 'white')) == \
        'an orange star to the left of a small blue circle on a white background'
    square = ShapeObject('square', 'red', 'large', (16.0, 16.0), size_in_caption=True)
    assert caption(Scene((square,), None, 'dark gradient')) == \
        'a large red square on a dark gradient background'


@pytest.mark.parametrize('split', ['train', 'heldout'])
def test_captions_are_grammatical_and_match_labels(split):
    dataset = ShapesT2I(split, 300, seed=1)
    relation_pattern = '|'.join(RELATIONS.values())
    articles = set()
    for i, text in enumerate(dataset.captions()):
        scene = dataset.scene(i)
        words = text.split()
        for article, word in zip(words, words[1:]):
            if article in ('a', 'an'):
                assert article == ('an' if word[0] in 'aeiou' else 'a'), text
                articles.add(article)
        relations = re.findall(rf'\b(?:{relation_pattern})\b', text)
        if len(scene.objects) == 2:
            assert relations == [RELATIONS[scene.relation]], text
        else:
            assert relations == [] and scene.relation is None, text
        for obj in scene.objects:
            noun = f'{obj.colour} {obj.shape}'
            assert (f'{obj.size} {noun}' if obj.size_in_caption else f' {noun}') in text, text
        mentioned = sum(o.size_in_caption for o in scene.objects)
        assert sum(w in SIZES for w in words) == mentioned, text
        assert text.endswith(f' {scene.background} background'), text
    assert articles == {'a', 'an'}  # both cases exercised


def test_captions_helper_and_attribute_indices():
    dataset = ShapesT2I('val', 12, seed=4)
    assert dataset.captions() == [dataset[i]['caption'] for i in range(12)]
    for i in range(12):
        attrs = dataset[i]['attributes']
        indices = attribute_indices(attrs)
        assert [SHAPES[j] for j in indices['shape']] == [o['shape'] for o in attrs['objects']]
        colours = [tuple(COLOURS)[j] for j in indices['colour']]
        assert colours == [o['colour'] for o in attrs['objects']]
        assert [tuple(SIZES)[j] for j in indices['size']] == [o['size'] for o in attrs['objects']]
        assert tuple(BACKGROUNDS)[indices['background']] == attrs['background']
        relation = indices['relation']
        assert (relation is None) == (attrs['relation'] is None)
        if relation is not None:
            assert tuple(RELATIONS)[relation] == attrs['relation']


def test_objects_contrast_with_background_and_stay_on_canvas():
    dataset = ShapesT2I('heldout', 1000, seed=3)
    bare = {}
    for i in range(len(dataset)):
        scene = dataset.scene(i)
        colours = [o.colour for o in scene.objects]
        assert len(set(colours)) == len(colours)
        if scene.background not in bare:
            bare[scene.background] = _bare(scene).reshape(-1, 3).astype(np.float32)
        for obj in scene.objects:
            rgb = np.asarray(COLOURS[obj.colour])
            distance = np.linalg.norm(bare[scene.background] - rgb, axis=1)
            assert distance.min() >= MIN_CONTRAST - 1, (obj, scene.background)  # -1: uint8 rounding
            half = SIZES[obj.size]
            for c in obj.centre:
                assert MARGIN + half - 1e-6 <= c <= IMAGE_SIZE - MARGIN - half + 1e-6
    assert set(bare) == set(BACKGROUNDS)


def test_single_object_is_drawn_in_its_colour_at_its_centre_and_nowhere_else():
    dataset = ShapesT2I('train', 80, seed=0)
    checked = 0
    for i in range(len(dataset)):
        scene = dataset.scene(i)
        if len(scene.objects) != 1:
            continue
        (obj,) = scene.objects
        image, bare = render(scene).astype(int), _bare(scene).astype(int)
        x, y = (int(c) for c in obj.centre)
        assert np.abs(image[y, x] - COLOURS[obj.colour]).max() <= 1, (i, obj)
        assert np.abs(image[y, x] - bare[y, x]).sum() > 60, (i, obj)
        # Outside the object's bounding square the background is untouched.
        half = SIZES[obj.size]
        outside = np.ones(image.shape[:2], bool)
        outside[int(obj.centre[1] - half):int(obj.centre[1] + half) + 1,
                int(obj.centre[0] - half):int(obj.centre[0] + half) + 1] = False
        assert np.array_equal(image[outside], bare[outside])
        checked += 1
    assert checked >= 20


def _coverage(shape: str, size: str, centre: Tuple[float, float] = (16.0, 16.0)) -> np.ndarray:
    """(H, W) grey level of a white ``shape`` on black: 20 + 230 * pixel coverage."""
    obj = ShapeObject(shape, 'white', size, centre, False)
    return render(Scene((obj,), None, 'black')).astype(np.float32)[..., 0]


@pytest.mark.parametrize('shape', SHAPES)
def test_objects_sit_at_their_labelled_centre(shape):
    centre = (13.3, 17.8)  # off the pixel grid: anti-aliasing must place it sub-pixel
    weight = _coverage(shape, 'large', centre) - 20
    ys, xs = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE] + 0.5  # pixel centres
    # Every shape is mirror-symmetric about its vertical axis.
    assert abs((weight * xs).sum() / weight.sum() - centre[0]) < 0.1
    if shape in ('circle', 'square', 'cross', 'star'):  # point- or 5-fold symmetric
        assert abs((weight * ys).sum() / weight.sum() - centre[1]) < 0.1


def test_sizes_scale_area_and_shapes_differ():
    large = {s: _coverage(s, 'large') for s in SHAPES}
    small = {s: _coverage(s, 'small') for s in SHAPES}
    expected = (SIZES['large'] / SIZES['small']) ** 2
    for s in SHAPES:
        ratio = (large[s] - 20).sum() / (small[s] - 20).sum()  # 20: the black background level
        assert abs(ratio - expected) < 0.1 * expected, (s, ratio)
    # Distinguishable: any two large shapes disagree on a good share of their pixels.
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1:]:
            mask_a, mask_b = large[a] > 128, large[b] > 128
            iou = (mask_a & mask_b).sum() / (mask_a | mask_b).sum()
            assert iou < 0.85, (a, b, iou)


def test_relation_is_true_in_pixel_space():
    checked = 0
    for split in ('train', 'heldout'):
        dataset = ShapesT2I(split, 120, seed=7)
        for i in range(len(dataset)):
            scene = dataset.scene(i)
            if scene.relation is None:
                continue
            image = render(scene)
            ys_a, xs_a = np.nonzero(_colour_mask(image, scene.objects[0].colour))
            ys_b, xs_b = np.nonzero(_colour_mask(image, scene.objects[1].colour))
            assert len(xs_a) >= 9 and len(xs_b) >= 9, caption(scene)
            # Centroids in the right order, and the objects apart along that axis.
            if scene.relation == 'left of':
                ok = xs_a.mean() < xs_b.mean() and xs_a.max() < xs_b.min()
            elif scene.relation == 'right of':
                ok = xs_a.mean() > xs_b.mean() and xs_a.min() > xs_b.max()
            elif scene.relation == 'above':  # image rows grow downwards
                ok = ys_a.mean() < ys_b.mean() and ys_a.max() < ys_b.min()
            else:
                ok = ys_a.mean() > ys_b.mean() and ys_a.min() > ys_b.max()
            assert ok, (split, i, caption(scene))
            # ...and the relation's axis dominates, so 'left of' never reads as 'above'.
            dx, dy = abs(xs_a.mean() - xs_b.mean()), abs(ys_a.mean() - ys_b.mean())
            horizontal = scene.relation in ('left of', 'right of')
            assert (dx > dy) == horizontal, (split, i, caption(scene))
            checked += 1
    assert checked >= 80


def test_bad_arguments_fail_loudly():
    with pytest.raises(ValueError, match='train, val, heldout'):
        ShapesT2I('test')
    with pytest.raises(ValueError, match='train, val, heldout'):
        DATASETS.build(dict(type='ShapesT2I', split='valid'))
    with pytest.raises(ValueError, match='num_samples'):
        ShapesT2I('train', num_samples=0)
    with pytest.raises(ValueError, match='seed'):
        ShapesT2I('train', seed=-1)
    dataset = ShapesT2I('train', 5)
    for index in (5, -1):
        with pytest.raises(IndexError, match='length 5'):
            dataset[index]
