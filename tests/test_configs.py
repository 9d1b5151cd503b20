"""Every shipped config parses, and the paper settings and ablations say what they claim."""
import glob
import os

import pytest
from mmengine.config import Config

from alter.registry import MODELS

from .conftest import ROOT

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True))


def load(name: str) -> Config:
    return Config.fromfile(os.path.join(ROOT, 'configs', name))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_parses_and_names_registered_types(path):
    cfg = Config.fromfile(path)
    model = cfg.get('model', {})
    if 'type' in model:
        assert MODELS.get(model['type']) is not None
    if 'default_scope' in cfg:
        assert cfg.default_scope == 'alter'


def test_paper_setting():
    cfg = load('alter/sd21_e10_s35.py')
    m = cfg.model
    assert (m.type, m.num_experts, m.target_sparsity, m.schedule) == ('ALTER', 10, 0.35, 'joint')
    assert m.loss_weights == dict(denoise=1e-4, out_kd=1.0, feat_kd=1.0, ratio=5.0, balance=1.0)
    assert (m.hypernet.gate_offset, m.hypernet.gate_tau, m.hypernet.route_tau) == (4.0, 0.4, 0.4)
    assert m.resolution == 512 and m.noise_scheduler.prediction_type == 'v_prediction'
    assert cfg.optim_wrapper.unet.optimizer.lr == 1e-5
    assert cfg.optim_wrapper.hypernet.optimizer.lr == 7e-5
    assert cfg.train_cfg.max_iters == 32000
    assert cfg.param_scheduler.unet[0].end == 250
    assert cfg.train_dataloader.batch_size * 2 == 64  # per GPU on the paper's 2 GPUs


@pytest.mark.parametrize('name, expected', [
    ('alter/sd21_e4_s35.py', dict(num_experts=4, router='HyperNetRouter', schedule='joint')),
    ('alter/sd21_static_s35.py', dict(num_experts=1, router='StaticRouter', schedule='joint')),
    ('alter/sd21_manual_e4_s35.py', dict(num_experts=4, router='ManualRouter', schedule='joint')),
    ('alter/sd21_twostage_e4_s35.py',
     dict(num_experts=4, router='HyperNetRouter', schedule='two_stage')),
    ('alter/shapes_static_s35.py', dict(num_experts=1, router='StaticRouter', schedule='joint')),
    ('alter/shapes_manual_e4_s35.py', dict(num_experts=4, router='ManualRouter', schedule='joint')),
    ('alter/shapes_twostage_e4_s35.py',
     dict(num_experts=4, router='HyperNetRouter', schedule='two_stage')),
])
def test_ablations_change_only_their_axis(name, expected):
    m = load(name).model
    assert m.target_sparsity == 0.35
    got = dict(num_experts=m.num_experts, router=m.hypernet.router.type, schedule=m.schedule)
    assert got == expected
    assert m.hypernet.expert_generator.type == 'HyperExperts'
