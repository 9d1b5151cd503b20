"""tools/test.py on the embedded benchmark, and the prompt files and image store it uses."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mmengine.config import Config

from alter.evaluation.image_store import ImageStore
from alter.evaluation.prompts import load_prompts
from alter.evaluation.reference import ReferenceImages, resize_square
from alter.inference.experts import save_checkpoint
from alter.evaluation.features import cached_dataset_features
from alter.registry import METRICS, MODELS

from .conftest import ROOT as _ROOT
from .conftest import load_tool
from .test_evaluation import _MeanColour

ROOT = Path(_ROOT)

SHAPES = 'configs/alter/shapes_e4_s35.py'


# -- prompt files ------------------------------------------------------------------------------

def test_coco_captions_take_the_first_caption_of_each_image_in_id_order(tmp_path):
    path = tmp_path / 'captions_val2014.json'
    path.write_text(json.dumps(dict(images=[], annotations=[
        dict(image_id=9, id=1, caption='a dog '), dict(image_id=3, id=2, caption='a cat'),
        dict(image_id=9, id=3, caption='another dog'), dict(image_id=5, id=4, caption='a bird')])))
    assert load_prompts(path) == [dict(caption='a cat', image_id=3),
                                  dict(caption='a bird', image_id=5),
                                  dict(caption='a dog', image_id=9)]
    assert [p['image_id'] for p in load_prompts(path, limit=2)] == [3, 5]
    with pytest.raises(ValueError, match='4 prompts asked for but .* holds 3'):
        load_prompts(path, limit=4)


def test_csv_tsv_and_text_prompts(tmp_path):
    (tmp_path / 'p.csv').write_text('id,text\n1,"red, round"\n2,blue\n')
    (tmp_path / 'p.tsv').write_text('caption\tid\nred\t1\nblue\t2\n')
    (tmp_path / 'p.txt').write_text('red\n\n blue \n')
    assert load_prompts(tmp_path / 'p.csv', caption_column='text') == [
        dict(caption='red, round'), dict(caption='blue')]
    assert load_prompts(tmp_path / 'p.tsv') == [dict(caption='red'), dict(caption='blue')]
    assert load_prompts(tmp_path / 'p.txt') == [dict(caption='red'), dict(caption='blue')]
    with pytest.raises(ValueError, match="no column 'caption'.*--caption-column"):
        load_prompts(tmp_path / 'p.csv')
    (tmp_path / 'p.xml').write_text('<a/>')
    with pytest.raises(ValueError, match='unknown prompt file type'):
        load_prompts(tmp_path / 'p.xml')


# -- image store and reference images -----------------------------------------------------------

def test_image_store_round_trips_8_bit_images_and_refuses_other_settings(tmp_path):
    store = ImageStore(tmp_path / 'run', dict(steps=20))
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    store.save([0, 2], images[[0, 2]])
    assert store.missing(3) == [1]
    assert store.missing(3, rank=1, world_size=2) == [1] and store.missing(3, 0, 2) == []
    loaded = store.load([0, 2])
    assert (loaded - images[[0, 2]]).abs().max() <= 1 / 127.5  # 8-bit rounding only
    assert ImageStore(tmp_path / 'run', dict(steps=20)).missing(3) == [1]
    with pytest.raises(ValueError, match=r"other settings \(differing: \['steps'\]\)"):
        ImageStore(tmp_path / 'run', dict(steps=25))


def test_reference_images_are_center_cropped_and_resized(tmp_path):
    from PIL import Image
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, 10:50] = 255  # the central 40x40 square is white, the side bands black
    Image.fromarray(pixels).save(tmp_path / 'a.png')
    (tmp_path / 'notes.txt').write_text('not an image')
    dataset = ReferenceImages(str(tmp_path), size=16)
    assert len(dataset) == 1
    image = dataset[0]['image']
    assert image.shape == (3, 16, 16) and torch.allclose(image, torch.ones_like(image))
    assert resize_square(torch.zeros(2, 3, 10, 20), 5).shape == (2, 3, 5, 5)
    with pytest.raises(FileNotFoundError, match='--reference'):
        ReferenceImages(str(tmp_path / 'missing'))


def test_reference_features_read_by_dataloader_workers_with_a_progress_bar(tmp_path, capsys):
    from PIL import Image
    colours = np.arange(5 * 3, dtype=np.uint8).reshape(5, 1, 1, 3) * 17
    for i, colour in enumerate(colours):
        Image.fromarray(np.broadcast_to(colour, (12, 12, 3)).copy()).save(tmp_path / f'{i}.png')
    reference = dict(type='ReferenceImages', root=str(tmp_path), size=8)
    in_process = cached_dataset_features(_MeanColour(), reference, tmp_path / 'a', batch_size=2)
    expected = colours.reshape(5, 3) / 127.5 - 1  # each image's mean colour, in file order
    assert np.allclose(in_process[:, :3], expected, atol=1e-6)
    assert '100%' in capsys.readouterr().err.split('reference features')[-1]
    # Two worker processes read the same images in the same order (a metric's option).
    metric = METRICS.build(dict(type='ProxyFID', extractor=_MeanColour(), reference=reference,
                                cache_dir=str(tmp_path / 'b'), batch_size=2, num_workers=2))
    assert np.array_equal(metric.reference_features(), in_process)


# -- tools/test.py end to end ------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name the shipped teacher by a repository path


@pytest.fixture(scope='module')
def shapes_alter(tmp_path_factory):
    """Two ALTER checkpoints of the embedded benchmark (teacher UNet): experts that each skip
    every fourth unit, and experts that keep every unit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        model = MODELS.build(Config.fromfile(SHAPES).model).eval()
    experts = model.export_experts()
    num_units, num_experts = len(experts['unit_names']), len(experts['expert_masks'])
    masks = [[int(i % 4 != e % 4) for i in range(num_units)] for e in range(num_experts)]
    keep = model.costs['fvcore'].keep_ratio(torch.tensor(masks, dtype=torch.float64))
    route = torch.tensor(experts['routing_table'])
    pruned = dict(experts, expert_masks=masks,
                  keep_ratio=dict(experts['keep_ratio'], fvcore=keep[route].mean().item()))
    full = dict(experts, expert_masks=[[1] * num_units] * num_experts)
    root = tmp_path_factory.mktemp('ckpt')
    return (save_checkpoint(root / 'pruned', model.unet, pruned),
            save_checkpoint(root / 'full', model.unet, full), pruned)


def _run(tool, checkpoint, work_dir, *extra):
    return tool.main([SHAPES, str(checkpoint), '--num-prompts', '6', '--steps', '3',
                      '--batch-size', '4', '--work-dir', str(work_dir),
                      '--dense-store', str(work_dir.parent / 'dense'), *extra])


def test_routed_images_scored_resumed_and_recorded(shapes_alter, tmp_path):
    tool = load_tool('test')
    pruned, full, experts = shapes_alter
    metrics = ['--metrics', 'attribute_accuracy', 'ssim', 'psnr', 'macs', 'latency',
               '--latency-repeats', '1', '--latency-warmup', '0']
    out = _run(tool, pruned, tmp_path / 'pruned', *metrics)
    row = out['rows'][0]
    assert row['method'] == 'pruned-3' and row['keep_ratio'] == experts['keep_ratio']['fvcore']
    assert row['num_experts'] == len(experts['expert_masks'])
    assert 0 < row['ssim_vs_dense'] < 1 and np.isfinite(row['psnr_vs_dense'])
    assert row['ssim_vs_dense_ci_low'] <= row['ssim_vs_dense'] <= row['ssim_vs_dense_ci_high']
    assert row['attribute_accuracy_ci_low'] <= row['attribute_accuracy'] \
        <= row['attribute_accuracy_ci_high']
    per_image = pd.read_csv(tmp_path / 'pruned' / 'per_image.csv')
    assert list(per_image.prompt) == list(range(6))
    assert per_image.ssim_vs_dense.mean() == pytest.approx(row['ssim_vs_dense'])
    assert per_image.attribute_accuracy.mean() == pytest.approx(row['attribute_accuracy'])
    assert 0 <= row['attribute_accuracy'] <= 1
    assert row['gmacs_per_generation'] < 3 * 2 * row['dense_gmacs_per_unet_call']
    assert row['gmacs_per_unet_call'] == pytest.approx(row['gmacs_per_generation'] / 6)
    assert row['latency_seconds'] > 0 and row['latency_device'].startswith('CPU')
    files = {f: f.stat().st_mtime_ns for f in tmp_path.rglob('*.png')}
    assert len(list((tmp_path / 'pruned' / 'images').rglob('*.png'))) == 6  # routed
    assert len(list((tmp_path / 'dense').rglob('*.png'))) == 6  # dense, in the shared store

    # A rerun generates nothing and scores the same images the same way.
    again = _run(tool, pruned, tmp_path / 'pruned', '--metrics', 'attribute_accuracy', 'ssim',
                 'psnr')
    assert {f: f.stat().st_mtime_ns for f in files} == files
    assert again['rows'][0]['ssim_vs_dense'] == row['ssim_vs_dense']
    saved = json.loads((tmp_path / 'pruned' / 'results.json').read_text())
    assert saved['manifest']['seeds'].startswith('prompt i uses seed 0')
    assert (tmp_path / 'pruned' / 'results.csv').read_text().startswith('method,')

    # Experts that keep every unit reproduce the dense UNet's images exactly; another
    # work dir with the same settings reuses the dense images instead of regenerating them.
    same = _run(tool, full, tmp_path / 'full', '--metrics', 'ssim', 'psnr', '--label',
                'Static')['rows'][0]
    assert same['method'] == 'Static-3'
    assert same['ssim_vs_dense'] == pytest.approx(1.0) and same['psnr_vs_dense'] == float('inf')
    assert {f: f.stat().st_mtime_ns for f in files} == files


def test_missing_weights_and_references_fail_with_the_option_to_pass(shapes_alter, tmp_path):
    tool = load_tool('test')
    with pytest.raises(SystemExit):  # argparse: COCO presets need a prompt file
        tool.parse_args([SHAPES, 'dense', '--preset', 'coco2017-5k'])
    prompts = tmp_path / 'p.txt'
    prompts.write_text('a red circle\n')
    with pytest.raises(SystemExit, match='--reference'):
        tool.main([SHAPES, 'dense', '--prompts', str(prompts), '--num-prompts', '1', '--steps',
                   '1', '--metrics', 'fid', '--work-dir', str(tmp_path / 'w')])
    for metric, option in (('fid', '--inception-weights'), ('clip', '--clip-weights'),
                           ('cmmd', '--cmmd-weights')):
        with pytest.raises(FileNotFoundError, match=option):
            tool.main([SHAPES, 'dense', '--prompts', str(prompts), '--num-prompts', '1',
                       '--steps', '1', '--metrics', metric, '--reference', str(tmp_path),
                       '--work-dir', str(tmp_path / 'w')])
    assert not (tmp_path / 'w' / 'images').exists()  # refused before generating anything


# -- distributed evaluation -----------------------------------------------------------------------

def _dist_test(*args, cwd, timeout=240) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable,
               PORT=str(port))
    return subprocess.run(['bash', str(ROOT / 'tools' / 'dist_test.sh'), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _pixels(folder: Path) -> dict:
    """name -> uint8 pixels of every PNG under ``folder``."""
    from PIL import Image
    return {str(f.relative_to(folder)): np.asarray(Image.open(f))
            for f in sorted(folder.rglob('*.png'))}


def test_two_gloo_ranks_write_the_images_and_results_of_one_process(shapes_alter, tmp_path):
    """Sharded generation (prompts 0, 2, 4 on rank 0; 1, 3, 5 on rank 1, in other batches
    than one process's) gives the same 8-bit images, bit for bit: every image starts from
    its own seed's noise, and these float32 CPU kernels give a sample the same result in
    any batch (GPU kernels chosen per batch size need not). Rank 0 then scores all images
    as one process does."""
    tool = load_tool('test')
    pruned = shapes_alter[0]
    options = ['--num-prompts', '6', '--steps', '3', '--batch-size', '4',
               '--metrics', 'attribute_accuracy', 'alignment', 'ssim', 'psnr', 'macs']
    tool.main([SHAPES, str(pruned), *options, '--work-dir', str(tmp_path / 'one' / 'run'),
               '--dense-store', str(tmp_path / 'one' / 'dense')])

    # Two ranks, started from another directory with relative paths.
    two = tmp_path / 'two'
    two.mkdir()
    for name in ('configs', 'checkpoints'):
        (two / name).symlink_to(ROOT / name)
    (two / 'pruned').symlink_to(pruned)
    result = _dist_test(SHAPES, 'pruned', '2', *options, '--work-dir', 'run',
                        '--dense-store', 'dense', cwd=two)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Rank 0's share: 3 of the 6 routed images, one batch (one process: two batches).
    assert re.search(r'pruned-3 generation: 100%.* 1/1 ', result.stderr), result.stderr[-3000:]

    for folder in ('run/images', 'dense'):
        one, both = _pixels(tmp_path / 'one' / folder), _pixels(two / folder)
        assert len(one) == 6 and one.keys() == both.keys()
        assert all(np.array_equal(one[name], both[name]) for name in one), folder
    single = json.loads((tmp_path / 'one' / 'run' / 'results.json').read_text())
    double = json.loads((two / 'run' / 'results.json').read_text())
    assert single['rows'] == double['rows']
    assert 0 < single['rows'][0]['ssim_vs_dense'] < 1
    assert (single['manifest']['world_size'], double['manifest']['world_size']) == (1, 2)
    differ = {k for k in single['manifest'] if single['manifest'][k] != double['manifest'][k]}
    assert differ == {'world_size', 'checkpoint', 'command'}
    assert (tmp_path / 'one' / 'run' / 'per_image.csv').read_text() == \
        (two / 'run' / 'per_image.csv').read_text()


def test_dist_test_help_and_missing_arguments(tmp_path):
    shown = _dist_test('--help', cwd=tmp_path, timeout=30)
    assert shown.returncode == 0 and shown.stdout.startswith('usage: tools/dist_test.sh CONFIG')
    for args, problem in [((SHAPES, 'dense'), 'expected CONFIG, CHECKPOINT and NUM_GPUS, got 2'),
                          ((SHAPES, 'dense', '0'), "NUM_GPUS must be a positive integer, got '0'")]:
        refused = _dist_test(*args, cwd=tmp_path, timeout=30)
        assert refused.returncode == 2 and problem in refused.stderr, refused.stderr
        assert 'usage: tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS' in refused.stderr


def test_pytorch_launcher_without_torchrun_says_how_to_start_the_ranks(monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match='tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS'):
        load_tool('test').main([SHAPES, 'dense', '--num-prompts', '1', '--launcher', 'pytorch'])
