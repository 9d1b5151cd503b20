"""Cost models of the sparsity budget: MACs (the paper) and measured latency tables."""
import json

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, OptimWrapperDict

from alter.registry import COST_MODELS, MODELS, PRUNING_SPACES
from alter.units.costs import LATENCY_FORMAT, CostTableError, LatencyTable
from alter.units.macs import architecture_key
from alter.utils.cli import InputError

from .conftest import ROOT, build_tiny_unet, load_tool

TINY = f'{ROOT}/configs/alter/tiny_e4_s35.py'


def _model(**options):
    cfg = Config.fromfile(TINY)
    cfg.merge_from_dict({f'model.{k}': v for k, v in options.items()})
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def _train_step(model):
    """One joint step (hypernetwork, table refresh, UNet) with SGD; returns its log."""
    optim = OptimWrapperDict(**{name: OptimWrapper(torch.optim.SGD(part.parameters(), lr=1e-2))
                                for name, part in (('unet', model.unet),
                                                   ('hypernet', model.hypernet))})
    g = torch.Generator().manual_seed(0)
    batch = dict(latents=torch.randn(4, 12, 16, 16, generator=g),
                 context=torch.randn(4, 8, 32, generator=g))
    return model.train_step(batch, optim)


def _units(unet=None, space='paper'):
    unet = unet if unet is not None else build_tiny_unet()
    return unet, PRUNING_SPACES.build(dict(type=space)).find(unet)


def write_table(path, seconds=None, dense=0.05, space='paper', **changes) -> dict:
    """A latency table of the tiny UNet's units: ``seconds`` per unit (default 1 ms each)."""
    unet, units = _units(space=space)
    seconds = seconds or {}
    data = dict(format=LATENCY_FORMAT, device='CPU (test)', dtype='float32', resolution=32,
                latent_size=[16, 16], batch=2, torch_version=torch.__version__, repeats=1,
                architecture=dict(class_name=type(unet).__name__, key=architecture_key(unet)),
                space=space, dense_seconds=dense, all_skipped_seconds=dense / 2,
                units=[dict(name=u.name, kind=u.kind, path=u.path,
                            seconds=seconds.get(u.name, 1e-3), skipped_seconds=dense - 1e-3)
                       for u in units])
    data.update(changes)
    path.write_text(json.dumps(data))
    return data


def test_profiler_writes_one_measured_entry_per_unit(tmp_path):
    out = tmp_path / 'latency.json'
    load_tool('profile_units').main([TINY, '--device', 'cpu', '--batch', '1', '--repeats', '3',
                                     '--clock', 'cpu',
                                     '--out', str(out)])
    table = json.loads(out.read_text())
    unet, units = _units()
    assert [e['name'] for e in table['units']] == [u.name for u in units]
    assert [e['path'] for e in table['units']] == [u.path for u in units]
    assert (table['resolution'], table['batch'], table['dtype']) == (32, 1, 'float32')
    assert table['torch_version'] == torch.__version__ and table['device'].startswith('CPU')
    assert table['dense_seconds'] > 0 and table['clock'] == 'cpu'
    assert all(e['skipped_seconds'] > 0 and e['seconds'] >= 0 for e in table['units'])
    # Skipping all 34 units removes most of the call: far beyond timing noise.
    dense, everything = table['dense_seconds'], table['all_skipped_seconds']
    assert 0 < everything < 0.8 * dense
    # A unit's cost is what its skip saved (0 where timing noise hides it), scaled so that
    # the costs add up to what skipping every unit saves.
    for e in table['units']:
        saved = max(dense - e['skipped_seconds'], 0.0)
        assert e['seconds'] == pytest.approx(table['savings_scale'] * saved, abs=1e-12)
    assert sum(e['seconds'] for e in table['units']) == pytest.approx(dense - everything)
    loaded = LatencyTable.load(out, unet, units, 'paper')
    assert loaded.unit_names == [u.name for u in units] and loaded.batch == 1
    assert loaded.min_keep_ratio == pytest.approx(everything / dense)


@pytest.mark.parametrize('argv, message', [
    (['--resolution', '33'], r'--resolution must be a multiple of the latent scale 2 of .*'
     r'tiny_e4_s35\.py \(got 33\)'),
    (['--device', 'cuda', '--clock', 'cpu'], r'--clock cpu times host work only; use --clock '
     r'wall on cuda'),
])
def test_profiler_refuses_settings_it_cannot_time(tmp_path, argv, message):
    with pytest.raises(InputError, match=message):
        load_tool('profile_units').main([TINY, *argv, '--out', str(tmp_path / 'table.json')])
    assert not list(tmp_path.iterdir())


def test_macs_cost_model_is_the_default_and_the_mac_table_bit_for_bit():
    default, macs = _model(), _model(cost_model=dict(type='macs'))
    for model in (default, macs):
        assert model.budget is model.costs['fvcore']
        assert set(model.keep_ratios()) == {'fvcore', 'with_attention'}
    # The keep ratio the budget counts is the MAC-weighted formula, to the last bit.
    table = macs.costs['fvcore']
    masks = torch.rand(5, len(table.unit_macs), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0))
    by_hand = 1.0 - ((1.0 - masks) * torch.tensor(table.unit_macs, dtype=torch.float64)
                     / table.total_macs).sum(-1)
    assert torch.equal(macs.budget.keep_ratio(masks), by_hand)
    assert macs.budget.min_keep_ratio == 1.0 - table.prunable_macs / table.total_macs
    # The same training step, budget terms included, under the default and named option.
    logs = [_train_step(model) for model in (default, macs)]
    assert logs[0].keys() == logs[1].keys()
    for key in logs[0]:
        assert torch.equal(torch.as_tensor(logs[0][key]), torch.as_tensor(logs[1][key])), key


def test_latency_cost_model_counts_the_table(tmp_path):
    cheap, costly = tmp_path / 'cheap.json', tmp_path / 'costly.json'
    write_table(cheap)
    write_table(costly, seconds={'up.1.attn.0': 0.01})
    model = _model(cost_model=dict(type='latency', table=str(costly)))
    names = model.gating.names
    unit = names.index('up.1.attn.0')
    skip_one = torch.ones(len(names), dtype=torch.float64)
    skip_one[unit] = 0
    assert model.budget.keep_ratio(skip_one).item() == pytest.approx(0.8)
    assert model.budget.min_keep_ratio == pytest.approx(1 - (0.01 + 0.033) / 0.05)
    assert set(model.keep_ratios()) == {'fvcore', 'with_attention', 'latency'}
    assert model.costs['fvcore'].keep_ratio(skip_one).item() > 0.97  # MACs: a small unit

    # The hypernetwork's budget term counts the table: the same step, the same sampled
    # masks, a different sampled keep ratio once one unit is expensive.
    logs = [_train_step(_model(cost_model=dict(type='latency', table=str(path))))
            for path in (cheap, costly)]
    assert logs[0]['hyper/loss_perf'] == logs[1]['hyper/loss_perf']  # same masks
    assert logs[0]['hyper/keep_ratio_sampled'] != logs[1]['hyper/keep_ratio_sampled']
    assert logs[0]['hyper/loss_ratio'] != logs[1]['hyper/loss_ratio']
    log = _train_step(model)
    expected = model.budget.keep_ratio(model.timestep_masks.double()).mean()
    assert log['keep_ratio_latency'].item() == pytest.approx(expected.item())


def test_latency_budget_beyond_the_table_is_refused(tmp_path):
    path = tmp_path / 'latency.json'
    write_table(path)  # 34 units x 1 ms of 50 ms: 68 % of the call prunable
    with pytest.raises(ValueError, match=r"'latency' costs\); the largest reachable sparsity "
                       r"is 0\.680"):
        _model(cost_model=dict(type='latency', table=str(path)), target_sparsity=0.7)


@pytest.mark.parametrize('change, message', [
    (None, r'missing\.json not found; profile the model with tools/profile_units\.py'),
    ('not json', r'bad\.json is not JSON'),
    (dict(format='other'), r'bad\.json is not a latency table \(expected "format"'),
    (dict(architecture=dict(key='0123456789abcdef')),
     r'bad\.json was profiled on another architecture \(key 0123456789abcdef'),
    (dict(space='block'), r"bad\.json holds the units of the 'block' pruning space, the model "
     r"prunes the 'paper' space; .* --space paper"),
    ('drop', r"bad\.json does not match the model's 34 units \(it has 33; missing "
     r"\['down\.0\.res\.0'\]"),
    ('swap', r"missing \[\], unknown \[\], or in another order"),
    ('negative', r"bad\.json: unit 'down\.0\.res\.0' must be a number of seconds >= 0"),
    (dict(dense_seconds=0.02), r'the units save 0\.034 s together, not less than the dense '
     r'call \(0\.02 s\)'),
])
def test_unusable_latency_tables_are_refused_with_the_reason(tmp_path, change, message):
    path = tmp_path / ('missing.json' if change is None else 'bad.json')
    if change == 'not json':
        path.write_text('{"format": ')
    elif change is not None:
        data = write_table(path, **(change if isinstance(change, dict) else {}))
        if change == 'drop':
            data['units'] = data['units'][1:]
        elif change == 'swap':
            data['units'][:2] = data['units'][1::-1]
        elif change == 'negative':
            data['units'][0]['seconds'] = -1e-3
        path.write_text(json.dumps(data))
    unet, units = _units()
    with pytest.raises(CostTableError, match=message):
        LatencyTable.load(path, unet, units, 'paper')


@pytest.mark.parametrize('name', sorted(COST_MODELS.module_dict))
def test_every_cost_model_keeps_all_at_one_and_is_differentiable(tmp_path, name):
    """The registry's contract: ``costs(unet, units, space, macs)`` gives a table whose keep
    ratio is 1 with every unit on, ``min_keep_ratio`` with every unit off, and carries
    gradients to the masks."""
    configs = dict(macs=dict(type='macs'), latency=dict(type='latency', table=str(
        tmp_path / 'latency.json')))
    assert set(configs) == set(COST_MODELS.module_dict), 'add the new cost model here'
    write_table(tmp_path / 'latency.json')
    model = _model(cost_model=configs[name])
    table = model.budget
    n = len(model.gating)
    assert table.keep_ratio(torch.ones(n)).item() == pytest.approx(1.0)
    assert table.keep_ratio(torch.zeros(n, dtype=torch.float64)).item() == \
        pytest.approx(table.min_keep_ratio)
    masks = torch.full((3, n), 0.5, requires_grad=True)
    table.keep_ratio(masks).sum().backward()
    assert (masks.grad >= 0).all() and masks.grad.sum() > 0
    assert isinstance(table.name, str) and table.name in model.keep_ratios()
