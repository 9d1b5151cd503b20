"""Every backbone family on real diffusers classes at tiny size: units and bypasses, gating
equivalences, MAC conventions, router input, objectives, conditioning and a training step."""
import copy

import pytest
import torch
from mmengine.config import Config

from alter.inference.experts import expert_record
from alter.inference.grids import DiscreteGrid, SigmaGrid
from alter.models.conditioning import SDAutoencoder
from alter.models.objectives import FlowMatchingObjective, LearnedSigmaObjective
from alter.registry import BACKBONES, MODELS, OBJECTIVES, PRUNING_SPACES
from alter.units.backbones import backbone_of
from alter.units.gating import UnitGating
from alter.units.macs import count_module_macs, mac_table

from .backbone_presets import (DDPM, FAMILIES, FLOW, TRANSFORMERS, alter_config, build_denoiser,
                               example_inputs, preset)
from .conftest import ROOT
from .test_sd21_smoke import TINY_VAE
from .test_alter_training import _optim

# Units of the tiny presets: (name, kind, bypass) in execution order.
UNITS = {
    'dit': [('block.0', 'attn', 'identity'), ('block.1', 'attn', 'identity')],
    'pixart': [('block.0', 'attn', 'identity'), ('block.1', 'attn', 'identity')],
    'sd3': [('joint.0', 'joint', 'joint'), ('joint.1', 'joint', 'joint'),
            ('joint.2', 'joint', 'joint_last')],
    'flux': [('double.0', 'joint', 'joint'), ('double.1', 'joint', 'joint'),
             ('single.0', 'single', 'joint'), ('single.1', 'single', 'joint')],
}


def test_every_registered_family_and_objective_has_a_tiny_preset():
    """The shared contract tests below run every adapter and objective: a new family
    needs its preset in tests/backbone_presets.py."""
    families = {type(build_denoiser(f)).__name__ for f in FAMILIES}
    assert families == set(BACKBONES.known_names())
    objectives = {preset(f).get('objective', dict(type='DDPMObjective'))['type'] for f in FAMILIES}
    assert objectives == set(OBJECTIVES.known_names())


def _units(model, space='paper'):
    return PRUNING_SPACES.build(dict(type=space)).find(model)


def _run(model, inputs):
    with torch.no_grad():
        return backbone_of(model).predict(model, *inputs)


@pytest.mark.parametrize('family', TRANSFORMERS)
def test_every_transformer_block_is_a_unit(family):
    model = build_denoiser(family)
    units = _units(model)
    assert [(u.name, u.kind, u.bypass) for u in units] == UNITS[family]
    assert all(model.get_submodule(u.path) is u.module for u in units)
    for space in ('block', 'shortcut'):
        with pytest.raises(ValueError, match="one unit per transformer block.*'paper'"):
            _units(model, space)


def test_sdxl_units_are_resnets_and_each_deep_transformer_block():
    names = [u.name for u in _units(build_denoiser('sdxl'))]
    assert names == ['down.0.res.0', 'down.1.attn.0.0', 'down.1.attn.0.1', 'mid.res.0',
                     'mid.attn.0.0', 'mid.attn.0.1', 'mid.res.1', 'up.0.res.0', 'up.0.attn.0.0',
                     'up.0.attn.0.1', 'up.0.res.1', 'up.0.attn.1.0', 'up.0.attn.1.1',
                     'up.1.res.1']


@pytest.mark.parametrize('config, counts', [
    ('configs/alter/sd15_e10_s35.py', dict(paper=34, block=34, shortcut=38)),
    ('configs/alter/sdxl_e10_s35.py', dict(paper=83, block=24, shortcut=87)),
    ('configs/_base_/models/dit_xl2.py', dict(paper=28)),
    ('configs/_base_/models/pixart_alpha_1024.py', dict(paper=28)),
    ('configs/_base_/models/sd3_medium.py', dict(paper=24)),
    ('configs/_base_/models/flux_dev.py', dict(paper=57)),
])
def test_unit_counts_of_the_published_architectures(config, counts):
    """Built on the meta device: the real module trees, no memory."""
    with torch.device('meta'):
        model = MODELS.build(dict(Config.fromfile(f'{ROOT}/{config}').model.unet,
                                  load_weights=False))
    assert {space: len(_units(model, space)) for space in counts} == counts


@pytest.mark.parametrize('family', FAMILIES)
def test_all_ones_gates_equal_the_dense_model_bit_for_bit(family):
    model = build_denoiser(family)
    plain = copy.deepcopy(model)
    inputs = example_inputs(model)
    gating = UnitGating(_units(model))
    with gating.soft(torch.ones(3, len(gating))):
        soft = _run(model, inputs)
    with gating.hard([True] * len(gating)):
        hard = _run(model, inputs)
    dense = _run(plain, inputs)
    assert torch.equal(soft, dense) and torch.equal(hard, dense)
    gating.remove()
    assert not any('forward' in m.__dict__ for m in model.modules())
    assert list(model.state_dict()) == list(plain.state_dict())
    assert torch.equal(_run(model, inputs), dense)


@pytest.mark.parametrize('family', FAMILIES)
def test_hard_skip_equals_the_gated_blend_with_binary_gates(family):
    """Each unit skipped alone (it changes the output), then random patterns."""
    model = build_denoiser(family)
    inputs = example_inputs(model)
    gating = UnitGating(_units(model))
    dense = _run(model, inputs)
    g = torch.Generator().manual_seed(FAMILIES.index(family))
    patterns = [[j != i for j in range(len(gating))] for i in range(len(gating))]
    patterns += [(torch.rand(len(gating), generator=g) > 0.5).tolist() for _ in range(2)]
    for i, keep in enumerate(patterns):
        with gating.hard(keep):
            hard = _run(model, inputs)
        with gating.soft(torch.tensor(keep, dtype=torch.float32).expand(3, -1)):
            soft = _run(model, inputs)
        assert (hard - soft).abs().max() <= 1e-5, keep
        if i < len(gating):
            assert (hard - dense).abs().max() > 1e-4, f'skipping {gating.names[i]} changed nothing'


def test_selected_flux_keeps_its_rotary_embeddings_whole_when_the_batch_matches_their_length():
    """Flux's rotary embeddings are (tokens, dim): at a batch of 22 = 16 latent patches + 6 text
    tokens their first dimension equals the batch, and they must not be taken per sample."""
    model = build_denoiser('flux')
    latents, _, context = example_inputs(model, batch=22)
    inputs = (latents, torch.linspace(0, 999, 22), context)
    gating = UnitGating(_units(model))
    gates = (torch.rand(22, len(gating), generator=torch.Generator().manual_seed(3)) > 0.5).float()
    with torch.no_grad():
        soft, selected = (_predict_in(mode, gates, model, inputs)
                          for mode in (gating.soft, gating.selected))
    assert (soft - selected).abs().max() <= 1e-5


def _predict_in(mode, gates, model, inputs):
    with mode(gates):
        return backbone_of(model).predict(model, *inputs)


@pytest.mark.parametrize('family', FAMILIES)
def test_selected_units_equal_the_gated_blend_in_value_and_gradient(family):
    """Per-sample binary gates (a unit on for every sample, one for none, the rest mixed):
    running each unit on its selected samples gives the blend's output and gradients."""
    model = build_denoiser(family)
    inputs = example_inputs(model)
    gating = UnitGating(_units(model))
    g = torch.Generator().manual_seed(FAMILIES.index(family))
    gates = (torch.rand(3, len(gating), generator=g) > 0.5).float()
    gates[:, 0], gates[:, -1] = 1, 0
    results = []
    for mode in (gating.soft, gating.selected):
        model.zero_grad(set_to_none=True)
        with mode(gates):
            out = backbone_of(model).predict(model, *inputs)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()]))
    (soft, soft_grads), (selected, selected_grads) = results
    assert (soft - selected).abs().max() <= 1e-5
    for a, b in zip(soft_grads, selected_grads):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-5))
    last = gating.units[-1].module.parameters()
    assert all(p.grad is not None and not p.grad.any() for p in last)  # ran, times zero
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):  # as under --amp
        half = [_predict_in(mode, gates, model, inputs) for mode in (gating.soft, gating.selected)]
    assert half[0].dtype == half[1].dtype
    assert (half[0] - half[1]).float().abs().max() <= 1e-2 * half[0].float().abs().max()
    with pytest.raises(ValueError, match='binary gates'):
        gating.set_selected(torch.full((3, len(gating)), 0.5))


@pytest.mark.parametrize('family', ['sd3', 'flux'])
def test_skipped_joint_blocks_pass_both_streams_on(family):
    """Called by keyword (the models' forward) or positionally (gradient checkpointing);
    SD3's last block ends the text stream, skipped or not."""
    model = build_denoiser(family)
    units = _units(model)
    gating = UnitGating(units)
    width = model.inner_dim
    image, text, temb = torch.randn(2, 16, width), torch.randn(2, 6, width), torch.randn(2, width)
    with gating.hard([False] * len(units)):
        for unit in units:
            by_name = unit.module(hidden_states=image, encoder_hidden_states=text, temb=temb)
            positional = unit.module(image, text, temb)
            expected_text = None if unit.bypass == 'joint_last' else text
            for out in (by_name, positional):
                assert out[0] is expected_text and out[1] is image
    with gating.soft(torch.zeros(2, len(units))):
        out = units[0].module(hidden_states=image, encoder_hidden_states=text, temb=temb)
        assert torch.equal(out[0], text) and torch.equal(out[1], image)


@pytest.mark.parametrize('family', ['dit', 'sd3', 'flux'])
def test_gates_hold_under_gradient_checkpointing(family):
    """Checkpointed models call their blocks positionally; the gates see the same inputs."""
    model = build_denoiser(family)
    backbone_of(model).prepare_training(model)
    inputs = example_inputs(model)
    gating = UnitGating(_units(model))
    gates = torch.rand(3, len(gating), generator=torch.Generator().manual_seed(2))
    with gating.soft(gates):
        plain = _run(model, inputs)
        model.enable_gradient_checkpointing()
        model.train()
        checkpointed = backbone_of(model).predict(model, *inputs)
    assert checkpointed.requires_grad and torch.allclose(checkpointed, plain, atol=1e-6)


# Attention matmul MACs (Q.K^T and A.V) of the tiny presets at 8 x 8 latents and 6 text
# tokens, from their shapes: B * Lq * Lk * (inner_q + inner_v), inner = heads * head dim.
ATTENTION = {
    # 2 blocks of self-attention over (8 / 2)^2 = 16 patches, inner 16.
    'dit': 2 * 16 * 16 * 32,
    # ... plus cross-attention to the 6 text tokens.
    'pixart': 2 * (16 * 16 * 32 + 16 * 6 * 32),
    # 3 joint blocks attending over 16 patches + 6 text tokens together.
    'sd3': 3 * 22 * 22 * 32,
    # 2 double- and 2 single-stream blocks over 16 packed 2x2 latents + 6 text tokens.
    'flux': 4 * 22 * 22 * 32,
    # 8 transformer blocks at 4 x 4, width 32: self-attention + cross-attention.
    'sdxl': 8 * (16 * 16 * 64 + 16 * 6 * 64),
}


@pytest.mark.parametrize('family', FAMILIES)
def test_with_attention_adds_exactly_the_attention_matmuls(family):
    model = build_denoiser(family)
    units = _units(model)
    counts = count_module_macs(model, (8, 8), 6)
    fv, wa = counts['fvcore'], counts['with_attention']
    assert wa[''] - fv[''] == ATTENTION[family]
    # All attention lies in units; the units' MACs are parts of the whole.
    assert sum(wa[u.path] - fv[u.path] for u in units) == ATTENTION[family]
    assert 0 < sum(fv[u.path] for u in units) < fv['']
    table = mac_table(model, units, 'paper', 64, 8, 6, 'with_attention')
    assert table.total_macs == wa[''] and table.unit_names == [u.name for u in units]


def test_flux_double_and_single_blocks_are_counted_not_assumed():
    model = build_denoiser('flux')
    fv = count_module_macs(model, (8, 8), 6)['fvcore']
    double = [fv[f'transformer_blocks.{i}'] for i in range(2)]
    single = [fv[f'single_transformer_blocks.{i}'] for i in range(2)]
    assert double[0] == double[1] and single[0] == single[1] and double[0] != single[0]


@pytest.mark.parametrize('family', FAMILIES)
def test_router_reads_the_backbone_own_sinusoidal_projection(family):
    """The hypernetwork's features are the projection the model applies to the timestep it
    receives (Flux receives sigma = t / 1000 and scales it back), at each row's value."""
    model = MODELS.build(alter_config(family))
    projection = model.backbone.time_projection(model.unet)
    seen = []
    handle = projection.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    latents, _, context = example_inputs(model.unet, batch=1)
    with torch.no_grad():
        model.predict(model.unet, latents, torch.tensor([500.0]), context)
    handle.remove()
    assert seen[0].tolist() == pytest.approx([500.0])
    assert torch.equal(model.hypernet.router.timestep_features,
                       projection(model.grid.values()).float())
    assert model.hypernet.router.timestep_features.shape[0] == 1000


@pytest.mark.parametrize('family', FAMILIES)
def test_one_alter_training_step_per_family(family):
    """Both phases of Algorithm 1 from captions or class labels; the expert file records
    the timestep grid of flow-matching models only."""
    torch.manual_seed(0)
    model = MODELS.build(alter_config(family))
    optim = _optim(model)
    key = model.text_encoder.condition_key
    batch = {'latents': torch.randn(2, model.backbone.latent_channels(model.unet), 8, 8),
             key: ['a red cube', 'two blue stars'] if key == 'caption' else torch.tensor([3, 7])}
    before = [p.detach().clone() for p in model.unet.parameters()]
    logs = [model.train_step(batch, optim) for _ in range(3)]  # T_end = 2
    assert 'hyper/loss' in logs[0] and 'hyper/loss' not in logs[2]
    assert all(torch.isfinite(v).all() for log in logs for v in log.values())
    assert any(not torch.equal(p, q) for p, q in zip(model.unet.parameters(), before))
    record = expert_record(model.export_experts(), model.unet)
    flow = family in ('sd3', 'flux')
    assert ('timestep_grid' in record) == flow
    assert record['architecture']['class_name'] == type(model.unet).__name__


def test_dit_labels_drop_to_the_null_class_by_the_model_own_draws():
    cfg = alter_config('dit', cond_dropout=0.5)
    cfg.update(type='LatentDiffusion')
    for key in ('num_experts', 'target_sparsity', 'hypernet_iters', 'loss_weights'):
        cfg.pop(key)
    model = MODELS.build(cfg)
    # diffusers' own label dropout (global random stream) is off in the student.
    assert all(m.dropout_prob == 0 for m in model.unet.modules() if hasattr(m, 'dropout_prob'))
    data = dict(latents=torch.zeros(64, 4, 8, 8), label=torch.arange(64) % 10)
    labels = [model.start_step(data)[1]['class_labels'] for _ in range(2)]
    assert torch.equal(labels[0], labels[1])  # re-seeded from (seed, step)
    dropped = labels[0] == 1000
    assert 10 < dropped.sum() < 54
    assert torch.equal(labels[0][~dropped], data['label'][~dropped])


def test_learned_sigma_objective_denoises_the_epsilon_half():
    objective = LearnedSigmaObjective(DDPM)
    prediction, target = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    expected = torch.nn.functional.mse_loss(prediction[:, :4], target)
    assert torch.equal(objective.denoising_loss(prediction, target), expected)
    with pytest.raises(ValueError, match='2 x 4 channels'):
        objective.denoising_loss(target, target)
    with pytest.raises(ValueError, match='predicts epsilon'):
        LearnedSigmaObjective(dict(DDPM, prediction_type='v_prediction'))


def test_flow_matching_draws_the_scheduler_sigmas():
    objective = FlowMatchingObjective(FLOW)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4000, 1, 1, 1, generator=g)

    def draw(sampler, batch, *shape):
        return sampler(batch, *shape, generator=g)

    batch = objective.draw(draw, latents)
    sigma = batch.timesteps / 1000
    noise = batch.target + latents  # the target is the velocity noise - x_0
    assert torch.allclose(batch.x_t, (1 - sigma.view(-1, 1, 1, 1)) * latents
                          + sigma.view(-1, 1, 1, 1) * noise, atol=1e-6)
    table = objective.scheduler.sigmas
    assert torch.isclose(sigma[:, None], table[None], rtol=1e-6, atol=0).any(1).all()
    # Logit-normal u around 0.5 on the shift-3 schedule: median sigma = 3 * 0.5 / (1 + 2 * 0.5).
    assert sigma.median().item() == pytest.approx(0.75, abs=0.03)


def test_flow_grid_rows_are_sigma_bins_of_the_received_value():
    sd3, flux = SigmaGrid(1000, 1000.0), SigmaGrid(1000, 1.0)
    for value, row in ((1000.0, 999), (999.5, 999), (999.0, 998), (0.4, 0), (500.0, 499)):
        assert sd3.row(value) == row and flux.row(value / 1000) == row
    values = torch.tensor([1000.0, 0.4, 500.0])
    assert sd3.rows(values).tolist() == [sd3.row(v) for v in values.tolist()]
    for value in (0.0, -1.0, 1000.5, float('nan')):
        with pytest.raises(ValueError, match='off the training grid'):
            sd3.row(value)
    assert DiscreteGrid(1000).rows(torch.tensor([249.4, 249.6])).tolist() == [249, 250]
    assert FlowMatchingObjective(FLOW).grid(1000.0) == flux


@pytest.mark.parametrize('family', ['sdxl', 'pixart', 'sd3', 'flux'])
def test_text_encoders_build_random_and_load_from_a_pipeline_folder(tmp_path, family):
    cfg = preset(family)['text_encoder']
    torch.manual_seed(0)
    random = MODELS.build(cfg)
    for subfolder, model in random.models.items():
        model.save_pretrained(tmp_path / subfolder)
    for subfolder, tokenizer in random.tokenizers.items():
        tokenizer.save_pretrained(tmp_path / subfolder.replace('text_encoder', 'tokenizer'))
    cfg.pop('arch')
    loaded = MODELS.build(dict(cfg, pretrained=str(tmp_path), load_weights=True))
    captions = ['a red cube', '']
    with torch.no_grad():
        expected, got = random(captions), loaded(captions)
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got)
    states = got['encoder_hidden_states']
    assert states.shape == (2, random.context_length, random.dim)
    denoiser = build_denoiser(family)
    assert random.dim == backbone_of(denoiser).context_dim(denoiser)


def test_sd3_and_flux_autoencoders_shift_their_latents():
    """latent = (posterior sample - shift) * scaling, as StableDiffusion3Pipeline undoes it."""
    vae = SDAutoencoder(load_weights=False, arch=dict(TINY_VAE, latent_channels=16,
                                                      scaling_factor=1.5305, shift_factor=0.0609))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images, torch.zeros(2, 16, 2, 2))
        mean = vae.vae.encode(images).latent_dist.mean
        torch.testing.assert_close(latents, (mean - 0.0609) * 1.5305)
        torch.testing.assert_close(vae.decode(latents), vae.vae.decode(mean).sample)


def test_conditioning_outputs_are_the_pipelines_layout():
    def build(family):
        torch.manual_seed(0)
        return MODELS.build(preset(family)['text_encoder'])

    captions = ['a red cube', '']
    with torch.no_grad():
        sdxl, pixart, sd3, flux = (build(f)(captions) for f in ('sdxl', 'pixart', 'sd3', 'flux'))
    assert sdxl['text_embeds'].shape == (2, 32)
    assert sdxl['time_ids'].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2
    assert pixart['encoder_attention_mask'].sum(1).tolist()[1] == 1  # '' is one EOS token
    assert sd3['pooled_projections'].shape == (2, 64)  # both CLIP towers' pooled outputs
    clip_width = 32 + 32
    assert sd3['encoder_hidden_states'][:, :77, clip_width:].abs().sum() == 0  # zero-padded
    assert flux['guidance'].tolist() == [3.5, 3.5] and flux['pooled_projections'].shape == (2, 32)
    with pytest.raises(ValueError, match='null class'):
        MODELS.build(dict(type='ClassLabels', num_classes=10))([11])
