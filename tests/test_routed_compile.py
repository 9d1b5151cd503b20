"""torch.compile of a routed UNet inside a real StableDiffusionPipeline.

Compiles are counted with a backend that counts the graphs dynamo hands it;
graph breaks with ``torch._dynamo.utils.counters``. Which units ran cannot be
observed inside a compiled graph; equality with the eager routed result (whose
units ``test_sd_pipeline`` checks call by call) stands for it. A small UNet
(10 units) keeps the 16-expert test's tracing to about a second per expert.
"""
import pytest
import torch
from diffusers import UNet2DConditionModel
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from alter.inference.experts import ExpertSet
from alter.inference.sd_pipeline import apply_experts

from .conftest import build_tiny_unet
from .test_inference import random_experts
from .test_sd_pipeline import ExecutionProbe, _run, tiny_pipeline


class CountingBackend:
    """A dynamo backend delegating to ``name`` that counts the graphs it compiles."""

    def __init__(self, name: str) -> None:
        self.backend, self.graphs = lookup_backend(name), 0

    def __call__(self, graph, example_inputs):
        self.graphs += 1
        return self.backend(graph, example_inputs)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def small_unet() -> UNet2DConditionModel:
    """Two levels, one layer per block: 10 ``paper`` units, 12 latent channels."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=12, out_channels=12, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
        up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=4, use_linear_projection=True).eval()


def distinct_experts(unet, num_experts: int) -> ExpertSet:
    """``num_experts`` different masks, each serving an equal interval of timesteps."""
    experts = random_experts(unet, num_experts)
    masks = [[bool(e >> i & 1) or i >= 5 for i in range(len(experts.unit_names))]
             for e in range(num_experts)]
    return ExpertSet(experts.unit_names, tuple(map(tuple, masks)), experts.route, experts.space,
                     experts.architecture, {}, experts.weights_fingerprint)


def test_16_experts_each_compile_once_in_one_graph_and_are_reused():
    """apply-then-compile with the diffusers recipe's fullgraph=True: no graph break, one
    compile per expert (16 > dynamo's recompile limit of 8 per code object), none again in
    a second generation, and the eager result."""
    unet = small_unet()
    experts = distinct_experts(unet, 16)
    pipe = tiny_pipeline(unet)
    apply_experts(pipe, experts)
    eager = _run(pipe, 32)
    backend = CountingBackend('eager')
    pipe.unet = torch.compile(pipe.unet, backend=backend, fullgraph=True)
    probe = ExecutionProbe(unet, count_units=False)
    compiled = _run(pipe, 32)
    assert {experts.route[round(t)] for t in probe.timesteps} == set(range(16))
    assert backend.graphs == 16
    assert torch.equal(_run(pipe, 32), compiled)
    assert backend.graphs == 16  # every expert reused
    assert not counters['graph_break']
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('how', ['compile-then-apply', 'module.compile()'])
def test_compile_then_apply_and_module_compile_work(how):
    unet = small_unet()
    experts = distinct_experts(unet, 3)
    pipe = tiny_pipeline(unet)
    backend = CountingBackend('aot_eager')
    if how == 'compile-then-apply':
        pipe.unet = torch.compile(pipe.unet, backend=backend, fullgraph=True)
        _run(pipe, 6)  # a dense generation compiles the dense graph first
        routed = apply_experts(pipe, experts)
    else:
        routed = apply_experts(pipe, experts)
        pipe.unet.compile(backend=backend, fullgraph=True)
    dense_graphs = backend.graphs
    probe = ExecutionProbe(unet, count_units=False)
    compiled = _run(pipe, 6)
    assert {experts.route[round(t)] for t in probe.timesteps} == {0, 1, 2}
    assert backend.graphs == dense_graphs + 3
    assert not counters['graph_break']
    routed.remove()
    eager_pipe = tiny_pipeline(small_unet())
    apply_experts(eager_pipe, experts)
    torch.testing.assert_close(compiled, _run(eager_pipe, 6), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_compiles_the_routed_tiny_unet():
    """The default backend (inductor, C++ on CPU) on the tiny SD2.1-topology UNet."""
    unet = build_tiny_unet()
    experts = random_experts(unet, 3)
    pipe = tiny_pipeline(unet)
    apply_experts(pipe, experts)
    eager = _run(pipe, 6)
    pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    compiled = _run(pipe, 6)
    assert not counters['graph_break']
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
