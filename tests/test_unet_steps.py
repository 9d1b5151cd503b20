"""UNet steps: the selected step (each unit on the samples whose expert keeps it) and the
grouped step (one hard-skipped forward and backward per expert) update the UNet exactly as
the blended step and as a per-sample reference, and skip for real."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.optim import OptimWrapper, OptimWrapperDict
from torch import nn

from alter.models.unet_steps import take_samples
from alter.registry import MODELS, PRUNING_SPACES, UNET_STEPS
from alter.units.gating import UnitGating

from .conftest import ROOT, load_tool

TINY = f'{ROOT}/configs/alter/tiny_e4_s35.py'
WEIGHT_DECAY = 0.1  # decays a parameter with a zero gradient, skips one with none


def _masks(num_experts: int, num_units: int) -> torch.Tensor:
    """(N_E, N_L) random masks at ~35 % of units off; unit 0 off in every expert."""
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(num_experts, num_units, generator=g) > 0.35).float()
    masks[:, 0] = 0
    return masks


def _first_layer(unit_module: nn.Module) -> nn.Module:
    """A layer that runs iff the unit's own computation runs (conv1 of a resnet, the first
    projection of a transformer block)."""
    return next(m for m in unit_module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _count_calls(modules):
    counts = [0] * len(modules)

    def counter(i):
        def hook(*_):
            counts[i] += 1
        return hook

    handles = [m.register_forward_hook(counter(i)) for i, m in enumerate(modules)]
    return counts, handles


@pytest.mark.parametrize('name', sorted(UNET_STEPS.module_dict))
def test_every_step_updates_as_each_sample_under_its_own_expert(name, tiny_unet):
    """Against a per-sample reference: sample i alone under its expert's hard mask, its
    loss weighted 1/B; a parameter no sample used has a zero gradient (so it decays)."""
    g = torch.Generator().manual_seed(2)
    x, context = torch.randn(6, 12, 16, 16, generator=g), torch.randn(6, 8, 32, generator=g)
    target = torch.randn(6, 12, 16, 16, generator=g)
    timesteps = torch.tensor([10, 900, 400, 20, 950, 500])
    experts = torch.tensor([2, 0, 1, 0, 2, 1])  # interleaved: grouping reorders the batch
    tiny_unet.train()
    reference = copy.deepcopy(tiny_unet)
    gating = UnitGating(PRUNING_SPACES.build(dict(type='paper')).find(reference))
    masks = _masks(4, len(gating))
    for i in range(6):
        with gating.hard(masks[experts[i]].bool().tolist()):
            (F.mse_loss(reference(x[i:i + 1], timesteps[i:i + 1], context[i:i + 1]).sample,
                        target[i:i + 1]) / 6).backward()
    with torch.no_grad():
        expected = [p - (p.grad if p.grad is not None else 0) - WEIGHT_DECAY * p
                    for p in reference.parameters()]

    unet = copy.deepcopy(tiny_unet)
    gating = UnitGating(PRUNING_SPACES.build(dict(type='paper')).find(unet))
    layers = [_first_layer(u.module) for u in gating.units]
    counts, handles = _count_calls(layers)

    def loss(index):
        xs, ts, cs, tg = take_samples((x, timesteps, context, target), index)
        return dict(loss_mse=F.mse_loss(unet(xs, ts, cs).sample, tg))

    wrapper = OptimWrapper(torch.optim.SGD(unet.parameters(), lr=1.0, weight_decay=WEIGHT_DECAY))
    terms = UNET_STEPS.build(dict(type=name))(unet, gating, masks, experts, loss, wrapper)
    for h in handles:
        h.remove()
    assert set(terms) == {'loss_mse'} and not terms['loss_mse'].requires_grad
    for p, q in zip(unet.parameters(), expected):
        assert torch.allclose(p, q, atol=2e-6), name
    initial = tiny_unet.get_submodule(gating.units[0].path).conv1.weight
    assert not torch.equal(layers[0].weight, initial)  # unit 0 never ran, yet decayed

    present = masks[[0, 1, 2]]
    if UNET_STEPS.get(name).runs_every_unit:
        assert counts == [1] * len(layers)
    else:  # each unit ran once per group whose expert keeps it: unit 0 never
        assert counts == present.sum(0).int().tolist() and counts[0] == 0


def test_selected_step_runs_each_unit_on_the_samples_that_keep_it(tiny_unet):
    """The samples a unit's first layer sees: those whose expert keeps it; one (times zero)
    where none does."""
    experts = torch.tensor([2, 0, 1, 0, 2, 1])
    gating = UnitGating(PRUNING_SPACES.build(dict(type='paper')).find(tiny_unet))
    masks = _masks(4, len(gating))
    seen = [[] for _ in gating.units]
    handles = [_first_layer(u.module).register_forward_hook(
        lambda m, inputs, out, i=i: seen[i].append(inputs[0].shape[0]))
        for i, u in enumerate(gating.units)]
    x, context = torch.randn(6, 12, 16, 16), torch.randn(6, 8, 32)

    def loss(index):
        return dict(loss_mse=tiny_unet(x, experts * 300, context).sample.square().mean())

    wrapper = OptimWrapper(torch.optim.SGD(tiny_unet.parameters(), lr=0.0))
    UNET_STEPS.build(dict(type='selected'))(tiny_unet, gating, masks, experts, loss, wrapper)
    for h in handles:
        h.remove()
    kept = masks[experts].sum(0).int().tolist()
    assert [s[0] for s in seen] == [k or 1 for k in kept] and kept[0] == 0
    assert {0, 2, 4, 6} <= set(kept)  # none, mixed selections and whole-batch ones


def _model(step: str, **options):
    cfg = Config.fromfile(TINY)
    cfg.merge_from_dict({'model.unet_step': dict(type=step), 'model.hypernet_iters': 0,
                         **{f'model.{k}': v for k, v in options.items()}})
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.expert_masks.copy_(_masks(4, len(model.gating)))
    model.routing_table.copy_(torch.arange(1000) * 4 // 1000)  # 4 equal intervals
    return model


def _train_step(model):
    """One UNet step (T_end = 0) on a batch of 6 with random timesteps; the log and the
    UNet's parameters after it."""
    g = torch.Generator().manual_seed(0)
    batch = dict(latents=torch.randn(6, 12, 16, 16, generator=g),
                 context=torch.randn(6, 8, 32, generator=g))
    optim = OptimWrapperDict(**{name: OptimWrapper(torch.optim.SGD(
        part.parameters(), lr=0.1, momentum=0.9, weight_decay=WEIGHT_DECAY))
        for name, part in (('unet', model.unet), ('hypernet', model.hypernet))})
    calls, handles = _count_calls([model.unet.conv_in])
    log = model.train_step(batch, optim)
    handles[0].remove()
    return log, [p.detach() for p in model.unet.parameters()], calls[0]


@pytest.fixture(scope='module')
def blended():
    return _train_step(_model('blended'))


@pytest.mark.parametrize('checkpointing', [False, True], ids=['plain', 'gradient-checkpointing'])
@pytest.mark.parametrize('step', ['selected', 'grouped'])
def test_alter_step_equals_blended(blended, step, checkpointing):
    """The whole ALTER UNet step: denoising, output and feature KD against the teacher's
    outputs taken at the same samples, several experts in the batch."""
    log, params, calls = _train_step(_model(step, gradient_checkpointing=checkpointing))
    ref_log, ref_params, ref_calls = blended
    # One student forward, or one per expert present.
    assert ref_calls == 1 and (calls == 1 if step == 'selected' else calls >= 3)
    for key in ('unet/loss', 'unet/loss_denoise', 'unet/loss_out_kd', 'unet/loss_feat_kd'):
        assert log[key].item() == pytest.approx(ref_log[key].item(), rel=1e-5), key
    assert ref_log['unet/loss_feat_kd'] > 0 and ref_log['unet/loss_out_kd'] > 0
    for p, q in zip(params, ref_params):
        assert torch.allclose(p, q, atol=1e-6)


def test_unknown_step_and_accumulation_are_refused():
    with pytest.raises(KeyError,
                       match="unknown unet step type 'groupd'.*blended, grouped, selected"):
        _model('groupd')
    model = _model('grouped')
    optim = OptimWrapperDict(
        unet=OptimWrapper(torch.optim.SGD(model.unet.parameters(), lr=0.1),
                          accumulative_counts=2),
        hypernet=OptimWrapper(torch.optim.SGD(model.hypernet.parameters(), lr=0.1)))
    batch = dict(latents=torch.randn(2, 12, 16, 16), context=torch.randn(2, 8, 32))
    with pytest.raises(ValueError,
                       match=r"accumulative_counts=2.*unet_step=dict\(type='blended'\)"):
        model.train_step(batch, optim)


def test_benchmark_script_runs_at_tiny_size(capsys):
    load_tool('benchmark_train_step').main(
        ['--models', 'tiny', '--experts', '2', '--batch', '2', '--repeats', '1'])
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith('tiny'))
    keep, times = float(row[5]), dict(zip(('blended', 'selected', 'grouped'),
                                          map(float, row[6:9])))
    assert 0.65 <= keep < 0.8 and min(times.values()) > 0  # each mask within the budget
    for column, step in ((9, 'selected'), (10, 'grouped')):  # the blended time over each
        assert float(row[column].rstrip('x')) == pytest.approx(
            times['blended'] / times[step], rel=0.01)
    table_keep = float(re.search(r'mask table keep ([\d.]+)', out).group(1))
    assert table_keep == pytest.approx(0.65, abs=0.05)  # the offset set to the budget
    shares = [int(s) for s in re.findall(r'update is (\d+) % of an iteration', out)]
    assert len(shares) == 3 and all(0 < s < 100 for s in shares)
