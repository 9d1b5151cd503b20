"""tools/benchmark_gpu.py on CPU at small size: every measurement, the files, the time budget.

The full run (SD2.1, float16, 768 px) needs a GPU; here the same code runs a
small SD-topology UNet (10 ``paper`` units, so that tracing for torch.compile
takes seconds) through the real StableDiffusionPipeline and dynamo's ``eager``
backend.
"""
import json
import os

import diffusers
import pytest
import torch

from torch._dynamo.backends.registry import register_backend

from alter.inference.sampler import build_sampling_scheduler
from alter.utils.cli import InputError
from alter.utils.config import load_config

from .conftest import ROOT, TINY_UNET_CONFIG, load_tool

FAILING = 'benchmark_gpu_failing'  # a torch.compile backend that raises
SMALL_UNET = f"""
_base_ = [{TINY_UNET_CONFIG!r}]
model = dict(unet=dict(arch=dict(
    layers_per_block=1, block_out_channels=[8, 16], attention_head_dim=[2, 2],
    down_block_types=['CrossAttnDownBlock2D', 'DownBlock2D'],
    up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D'], norm_num_groups=4)))
"""


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _run(tmp_path, config: str, *options: str) -> dict:
    out = tmp_path / 'out'
    report = load_tool('benchmark_gpu').main(
        [config, '--device', 'cpu', '--steps', '4', '3', '--out-dir', str(out), *options])
    saved = json.loads((out / 'benchmark_gpu.json').read_text())
    assert saved == json.loads(json.dumps(report))  # the file holds what the run measured
    assert sorted(os.listdir(out)) == ['benchmark_gpu.json', 'benchmark_gpu.md']  # no temp files
    saved['markdown'] = (out / 'benchmark_gpu.md').read_text()
    return saved


def test_every_measurement_at_small_size(tmp_path):
    config = tmp_path / 'small_unet.py'
    config.write_text(SMALL_UNET)
    report = _run(tmp_path, str(config), '--repeats', '1', '--loop-repeats', '1',
                  '--compile-backend', 'eager', '--compile-experts', '2')
    assert report['device'].startswith('CPU') and report['dtype'] == 'torch.float32'
    assert (report['torch'], report['diffusers']) == (torch.__version__, diffusers.__version__)
    assert (report['resolution'], report['latent'], report['guidance_batch']) == (32, 16, 2)
    assert report['gmacs_per_call'] > 0 and report['elapsed_seconds'] > 0 and report['complete']

    experts = report['per_step']['experts']
    assert len(experts) == 4 and report['per_step']['dense_seconds'] > 0
    for row in experts:  # each expert removes at least 35 % of the MACs, not much more
        assert 0.4 < row['keep_ratio'] <= 0.65
        assert row['mac_ratio'] == pytest.approx(1 / row['keep_ratio'])
        assert row['seconds'] > 0 and row['speedup'] > 0
        assert row['speedup_vs_ideal'] == pytest.approx(row['speedup'] / row['mac_ratio'])
    assert len({tuple(row['skipped_units']) for row in experts}) == 4  # four different masks

    routing = report['routing']
    assert routing['lookup_seconds'] > 0 and routing['lookup_fraction_of_step'] > 0
    assert routing['timestep_read_isolated_seconds'] > 0
    assert set(routing['timestep_read_loops']) == {'host', 'read'}

    e2e = report['end_to_end']
    assert e2e['dense_seconds'] > 0 and e2e['alter_seconds'] > 0 and e2e['speedup'] > 0
    assert e2e['mac_ratio'] > 4 / 3  # fewer steps, each cheaper
    # The routed pipeline ran, call by call, the expert of each timestep of its schedule.
    schedule = build_sampling_scheduler('ddim', dict(load_config(str(config)).model
                                                     .noise_scheduler))
    schedule.set_timesteps(3)
    routed = [t * 4 // 1000 for t in schedule.timesteps.tolist()]
    assert e2e['alter_calls_per_expert'] == [routed.count(e) for e in range(4)]
    assert len(set(routed)) > 1
    assert report['memory'] is None  # CUDA only

    compiled = report['compile']
    assert list(compiled['graphs']) == ['expert 0', 'dense', 'expert 1']
    assert compiled['skipped'] == {'expert 2': '--compile-experts',
                                   'expert 3': '--compile-experts'}
    for name, row in compiled['graphs'].items():
        assert row['first_call_seconds'] > 0 and row['compile_seconds'] >= 0
        assert row['eager_seconds'] > 0 and row['compiled_seconds'] > 0
        assert row['compile_speedup'] > 0 and row['speedup_vs_dense_compiled'] > 0
    assert compiled['graphs']['dense']['keep_ratio'] == 1.0

    markdown = report['markdown']
    assert markdown.startswith(f"# GPU benchmark: {report['device']}")
    assert '| end to end, diffusers StableDiffusionPipeline' in markdown
    assert '| expert 3 | not compiled (--compile-experts) |' in markdown
    assert markdown.count('| UNet call, expert') == 4


def test_budget_caps_repeats_and_compiling(tmp_path):
    """With no time left every section runs once and nothing is compiled; the report says so."""
    report = _run(tmp_path, os.path.join(ROOT, 'configs', 'alter', 'tiny_e4_s35.py'),
                  '--budget', '0.01', '--repeats', '5', '--loop-repeats', '3')
    assert report['per_step']['repeats'] == report['routing']['repeats'] == 1
    assert report['end_to_end']['repeats'] == 1
    compiled = report['compile']
    assert compiled['graphs'] == {} and compiled['repeats'] == 0
    assert list(compiled['skipped']) == ['expert 0', 'dense', 'expert 1', 'expert 2', 'expert 3']
    assert all(reason.startswith('time budget') for reason in compiled['skipped'].values())
    assert 'not compiled (time budget' in report['markdown']
    # Expert 0 is tools/benchmark_speed.py's expert (docs/benchmarks.md: keep 0.631).
    assert report['per_step']['experts'][0]['keep_ratio'] == pytest.approx(0.631, abs=5e-4)


def test_a_failing_compile_keeps_the_other_measurements(tmp_path):
    """The report is written before compiling; a compile error is reported, not fatal."""
    out = tmp_path / 'out' / 'benchmark_gpu.json'
    seen = []

    def failing(graph, example_inputs):
        seen.append(json.loads(out.read_text()))  # what a stopped run would have left
        raise RuntimeError('no kernel for this graph\nsecond line')

    if FAILING not in torch._dynamo.list_backends(exclude_tags=()):
        register_backend(failing, name=FAILING)
    config = tmp_path / 'small_unet.py'
    config.write_text(SMALL_UNET)
    report = _run(tmp_path, str(config), '--repeats', '1', '--loop-repeats', '1',
                  '--compile-backend', FAILING, '--compile-experts', '2')
    assert report['complete'] and report['end_to_end']['speedup'] > 0
    compiled = report['compile']
    assert compiled['graphs'] == {} and compiled['repeats'] == 0
    assert compiled['skipped'] == {
        'expert 0': 'compile failed: BackendCompilerFailed: backend=\'benchmark_gpu_failing\' '
                    'raised:',
        'dense': 'not tried: compiling expert 0 failed',
        'expert 1': 'not tried: compiling expert 0 failed',
        'expert 2': '--compile-experts', 'expert 3': '--compile-experts'}
    assert len(seen) == 1 and not seen[0]['complete'] and seen[0]['compile'] is None
    assert seen[0]['end_to_end'] == report['end_to_end']


def test_refuses_a_denoiser_the_pipeline_cannot_run(tmp_path):
    # The dense DiT teacher's config: random weights, no pipeline folder needed.
    with pytest.raises(InputError, match='shapes_dit_dense.py: model.unet builds a '
                       'PixArtTransformer2DModel; .*tools/benchmark_speed.py'):
        load_tool('benchmark_gpu').main(
            [os.path.join(ROOT, 'configs', 'teacher', 'shapes_dit_dense.py'), '--device', 'cpu',
             '--out-dir', str(tmp_path)])


def test_refuses_an_unknown_compile_backend(capsys):
    with pytest.raises(SystemExit):
        load_tool('benchmark_gpu').parse_args(['--compile-backend', 'inductr'])
    assert ("argument --compile-backend: 'inductr' is not a registered torch.compile backend; "
            'registered: ') in capsys.readouterr().err
