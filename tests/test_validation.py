"""Validation during training: GenerationValLoop, GenerationPrompts and the models' val_step,
on the embedded benchmark's model (its committed teacher) at a few prompts and steps."""
import argparse
import json
import math
import uuid

import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from alter.datasets.generation_prompts import GenerationPrompts
from alter.datasets.latent_cache import cache_cfg_options
from alter.engine.checkpoint import trust_local_checkpoints
from alter.engine.run_config import check_and_record
from alter.evaluation.benchmark import benchmark_prompts
from alter.inference.experts import (ExpertSet, expert_record, load_experts, load_unet,
                                     save_checkpoint)
from alter.inference.pipeline import TextToImage
from alter.inference.routing import ExpertRouter
from alter.registry import MODELS
from alter.units.gating import UnitGating
from alter.utils.cli import InputError

from . import test_clip_metrics
from .conftest import ROOT
from .test_clip_metrics import TINY_CLIP

tiny_clip_weights = test_clip_metrics.tiny_clip_weights  # the tiny random open_clip model

SHAPES = f'{ROOT}/configs/alter/shapes_e4_s35.py'
SAMPLING = dict(num_steps=3, guidance_scale=3.0, scheduler='ddim')


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shapes_cfg(work_dir, **options) -> Config:
    """The shipped ALTER config at a few iterations, prompts and steps, validating every
    iteration."""
    cfg = Config.fromfile(SHAPES)
    cfg.merge_from_dict({'train_cfg.max_iters': 2, 'train_cfg.val_begin': 1,
                         'train_cfg.val_interval': 1,
                         'model.hypernet_iters': 1, 'train_dataloader.batch_size': 2,
                         'val_dataloader.dataset.num_prompts': 4, 'val_cfg.num_steps': 3,
                         'default_hooks.logger.interval': 1, 'log_processor.window_size': 1,
                         **options})
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = uuid.uuid4().hex  # fresh logger and message hub per run
    return cfg


def scalars(work_dir) -> list:
    path = sorted(work_dir.glob('*/vis_data/scalars.json'))[-1]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_val_step_samples_the_routed_experts_as_deployed(tmp_path):
    model = MODELS.build(Config.fromfile(SHAPES).model).eval()
    prompts = GenerationPrompts('shapes', num_prompts=2)
    samples = [prompts[i] for i in range(len(prompts))]
    _, captions, seeds = benchmark_prompts(2)  # the evaluation tools' prompts and noise
    assert [s['caption'] for s in samples] == captions and [s['seed'] for s in samples] == seeds
    data = dict(samples=samples, sampling=SAMPLING)

    # The initial table keeps every unit: the student is its teacher.
    dense = model.val_step(data)
    assert [set(out) for out in dense] == [{'caption', 'seed', 'attributes', 'image',
                                           'teacher_image'}] * 2
    for out in dense:
        assert out['image'].shape == (3, 32, 32)
        torch.testing.assert_close(out['image'], out['teacher_image'], rtol=0, atol=1e-5)

    # Every expert skips unit 3: its inner layers never run, and the images change.
    unit = model.gating.units[3]
    inner = next(unit.module.children())
    calls = []
    handle = inner.register_forward_pre_hook(lambda *args: calls.append(1))
    model.expert_masks[:, 3] = 0
    try:
        routed = model.val_step(data)
    finally:
        handle.remove()
    assert calls == []
    for before, after in zip(dense, routed):
        assert (after['image'] - before['image']).abs().max() > 1e-3
        assert torch.equal(after['teacher_image'], before['teacher_image'])

    # The same images as the exported checkpoint, loaded and routed as a user would.
    checkpoint = save_checkpoint(tmp_path / 'ckpt', model.unet, model.export_experts())
    unet = load_unet(checkpoint).eval()
    deployed = TextToImage.from_model(model, unet=unet,
                                      router=ExpertRouter(unet, load_experts(checkpoint)))
    images = deployed(captions, seeds, **SAMPLING, progress=False)
    torch.testing.assert_close(torch.stack([out['image'] for out in routed]), images,
                               rtol=0, atol=1e-5)

    # The router drives the model's own gating; a gating of other modules is refused.
    assert model.inference_router().gating is model.gating
    experts = ExpertSet.from_dict(expert_record(model.export_experts(), model.unet))
    other = UnitGating(model.space.find(model.teacher))  # same paths, other modules
    try:
        with pytest.raises(ValueError, match="gating is not on the 'paper' units of this UNet"):
            ExpertRouter(model.unet, experts, gating=other)
    finally:
        other.remove()


def test_training_logs_validation_metrics_and_trains_as_without(tmp_path):
    trust_local_checkpoints()
    Runner.from_cfg(shapes_cfg(tmp_path / 'val')).train()
    rows = scalars(tmp_path / 'val')
    val = [row for row in rows if 'attribute_accuracy' in row]
    assert [row['step'] for row in val] == [1, 2]  # every val_interval and at the end
    for row in val:
        for key in ('attribute_accuracy', 'attribute_accuracy/colour', 'attribute_accuracy/shape',
                    'attribute_accuracy/background'):
            assert 0 <= row[key] <= 1
        assert row['attribute_accuracy/background'] > 0.5  # a trained teacher's few steps
        assert math.isfinite(row['alignment_lit_minilm_effnet'])
        assert row['attribute_accuracy_ci_low'] <= row['attribute_accuracy'] <= \
            row['attribute_accuracy_ci_high']
        # A step or two at warm-up learning rates: still close to the teacher's images.
        assert row['paired_teacher/ssim'] > 0.99 and row['paired_teacher/psnr'] > 40

    # Validation only reads the model: the same run without it trains identically.
    Runner.from_cfg(shapes_cfg(tmp_path / 'off', val_cfg=None, val_dataloader=None,
                               val_evaluator=None)).train()
    train_rows = [row for row in rows if 'iter' in row]
    plain = scalars(tmp_path / 'off')
    assert not any('attribute_accuracy' in row for row in plain)
    for key in ('unet/loss', 'hyper/loss', 'keep_ratio_fvcore'):
        assert [row[key] for row in train_rows] == [row[key] for row in plain]


def test_clip_score_validation_from_a_prompt_file(tmp_path, tiny_clip_weights):
    """The SD2.1 setting (configs/_base_/schedules/sd21_validation.py), here with a tiny
    random open_clip model and the embedded benchmark's model."""
    sd21 = Config.fromfile(f'{ROOT}/configs/_base_/schedules/sd21_validation.py')
    assert sd21.val_cfg.scheduler == 'pndm' and sd21.val_evaluator.type == 'CLIPScore'
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('a red circle\n\na blue square on a white background\n')
    cfg = shapes_cfg(tmp_path)
    cfg.val_cfg, cfg.val_dataloader = dict(sd21.val_cfg, num_steps=2), sd21.val_dataloader
    cfg.val_evaluator = sd21.val_evaluator
    cfg.merge_from_dict({'val_dataloader.dataset.prompts': str(prompts),
                         'val_dataloader.dataset.num_prompts': 2,
                         'val_evaluator.weights': str(tiny_clip_weights),
                         'val_evaluator.model_name': TINY_CLIP,
                         'val_evaluator.pretrained_tag': None})
    trust_local_checkpoints()
    metrics = Runner.from_cfg(cfg).val()
    score = metrics[f'clip_score_{TINY_CLIP}']
    assert math.isfinite(score) and -100 <= score <= 100


def test_sd21_validation_combines_with_the_paper_config(tmp_path):
    config = tmp_path / 'sd21_e4_s35_val.py'
    config.write_text(f"_base_ = ['{ROOT}/configs/alter/sd21_e4_s35.py', "
                      f"'{ROOT}/configs/_base_/schedules/sd21_validation.py']\n"
                      'train_cfg = dict(val_interval=2000)\n'
                      "val_dataloader = dict(dataset=dict(prompts='captions_val2014.json'))\n")
    cfg = Config.fromfile(str(config))
    assert cfg.train_cfg.max_iters == 32000 and cfg.train_cfg.val_interval == 2000
    assert cfg.val_dataloader.dataset.prompts == 'captions_val2014.json'
    with pytest.raises(InputError, match='no prompts given.*prompt file'):
        GenerationPrompts(prompts=None)


def test_validation_without_encoders_is_refused_before_training(tmp_path):
    cfg = shapes_cfg(tmp_path, **{'model.autoencoder': None})
    trust_local_checkpoints()
    runner = Runner.from_cfg(cfg)
    with pytest.raises(InputError, match='needs model.autoencoder.*val_cfg=None'):
        runner.train()
    assert runner.iter == 0
    # Latent-cache runs build no encoders, so their options turn validation off.
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = Config.fromfile(SHAPES)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *cache_cfg_options('c')]).cfg_options)
    assert (cfg.val_cfg, cfg.val_dataloader, cfg.val_evaluator) == (None, None, None)


def test_a_run_recorded_without_validation_resumes_with_it(tmp_path):
    cfg = Config.fromfile(SHAPES)
    cfg.work_dir = str(tmp_path)
    off = Config(dict(cfg.to_dict(), val_cfg=None, val_dataloader=None, val_evaluator=None))
    off.train_cfg.pop('val_interval')
    check_and_record(off, resuming=False)
    check_and_record(cfg, resuming=True)  # no "different config" refusal
