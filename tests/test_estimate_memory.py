"""tools/estimate_memory.py: activation bytes measured on a real (tiny) UNet, and each
row's arithmetic against direct counts."""
import torch

from alter.engine.parallel import sharded_modules
from alter.registry import MODELS, PRUNING_SPACES
from alter.units.gating import UnitGating
from alter.utils.config import load_config

from .conftest import ROOT, build_tiny_unet, load_tool


def test_activation_bytes_follow_precision_resolution_and_checkpointing():
    tool = load_tool('estimate_memory')
    unet = build_tiny_unet()
    context = unet.config.cross_attention_dim

    def measure(latent=16, amp='none', checkpointing=False):
        return tool.activation_bytes(build_tiny_unet() if checkpointing else unet, latent, 8,
                                     amp, checkpointing)

    full, fixed = measure()
    # Bigger than the input itself; without autocast nothing but the inputs' own scalars
    # stays per step (parameters are not activations).
    assert full > 4 * (4 * 16 * 16 + 8 * context)
    assert abs(fixed) < 0.01 * full
    half, copies = measure(amp='bf16')
    assert half < 0.75 * full  # half-precision activations ...
    n_params = sum(p.numel() for p in unet.parameters() if p.dim() > 1)
    assert copies > n_params  # ... and bf16 weight copies, once per step
    assert 3 * full < measure(latent=32)[0] < 5 * full  # ~ proportional to the latent's area
    assert measure(checkpointing=True)[0] < 0.5 * full
    assert not any(p.grad is not None for p in unet.parameters())  # forward only


def test_frozen_components_are_counted_on_the_meta_device():
    tool = load_tool('estimate_memory')
    assert tool.num_parameters(None) == 0
    assert tool.num_parameters(dict(type='PixelUnshuffleAutoencoder')) == 0  # no weights
    vae = dict(type='SDAutoencoder', arch=dict(
        block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=32,
        down_block_types=['DownEncoderBlock2D'] * 2, up_block_types=['UpDecoderBlock2D'] * 2))
    built = MODELS.build(dict(vae, load_weights=False))
    assert tool.num_parameters(vae) == sum(p.numel() for p in built.parameters()) > 0


def test_largest_gathered_module_counts_its_own_parameters():
    """Each parameter belongs to the innermost sharded module whose name prefixes it."""
    tool = load_tool('estimate_memory')
    unet = build_tiny_unet()
    names = {module: name for name, module in unet.named_modules()}
    prefixes = [names[m] for m in sharded_modules(unet)]
    own = {}
    for name, p in unet.named_parameters():
        owner = max((q for q in prefixes if q == '' or name.startswith(q + '.')), key=len)
        own[owner] = own.get(owner, 0) + p.numel()
    assert sum(own.values()) == sum(p.numel() for p in unet.parameters())
    assert tool.largest_shard_unit(unet) == max(own.values())
    assert {'', 'down_blocks.0', 'down_blocks.0.resnets.0', 'mid_block.attentions.0'} <= set(own)


def test_rows_are_direct_counts_of_the_parts(monkeypatch):
    """Every static row is bytes per parameter times a direct count of the built part's
    parameters: the benchmark's own VAE (from its folder's config, not SD2.1's) and the
    MiniLM text encoder included; FSDP divides the sharded parts."""
    monkeypatch.chdir(ROOT)  # the config names the Shapes VAE by its repository path
    tool = load_tool('estimate_memory')
    cfg = load_config(f'{ROOT}/configs/alter/shapes_e4_s35.py')
    torch.manual_seed(0)
    n_unet = sum(p.numel() for p in MODELS.build(dict(cfg.model.unet, load_weights=False))
                 .parameters())
    frozen = sum(p.numel() for key in ('autoencoder', 'text_encoder')
                 for p in MODELS.build(cfg.model[key]).parameters())  # the real, loaded parts
    assert tool.num_parameters(cfg.model.autoencoder) < 2e6  # the small VAE, not SD2.1's 84 M
    ddp = tool.estimate(cfg, batch=3, amp='none')
    fsdp = tool.estimate(cfg, batch=3, amp='none', fsdp=4)
    assert list(ddp)[:5] == list(fsdp)[:5] == [
        'UNet weights (fp32)', 'UNet gradients (fp32)', 'optimiser state (adamw)',
        'teacher UNet (float32)', 'VAE + text encoder (frozen)']
    for rows, shards in ((ddp, 1), (fsdp, 4)):
        values = list(rows.values())
        assert values[:4] == [4 * n_unet / shards, 4 * n_unet / shards, 8 * n_unet / shards,
                              4 * n_unet / shards]
        assert values[4] == 4 * frozen
    assert ddp['DDP gradient buckets (fp32)'] == 4 * n_unet
    unet = MODELS.build(dict(cfg.model.unet, load_weights=False))
    assert fsdp['gathered layers (2 x largest + its gradients)'] == \
        3 * 4 * tool.largest_shard_unit(unet)
    per_sample, per_step = tool.activation_bytes(unet, 8, cfg.model.context_length, 'none', False)
    assert ddp[f'activations (3 x {per_sample / tool.GIB:.2f} GiB)'] == 3 * per_sample
    assert ddp['half-precision weight copies (autocast)'] == per_step
    half = tool.estimate(load_config(f'{ROOT}/configs/alter/shapes_e4_s35.py',
                                     {'model.frozen_dtype': 'float16'}), batch=3, amp='none')
    assert half['teacher UNet (float16)'] == 2 * n_unet
    assert half['VAE + text encoder (frozen)'] == 2 * frozen


def test_bytes_per_parameter_match_torch():
    """The optimiser state and frozen-weight byte counts are what torch allocates."""
    tool = load_tool('estimate_memory')
    unet = build_tiny_unet()
    n = sum(p.numel() for p in unet.parameters())
    for name, optimizer in (('adamw', torch.optim.AdamW), ('sgd', torch.optim.SGD)):
        opt = optimizer(unet.parameters(), lr=1e-6)
        for p in unet.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        state = sum(v.numel() * v.element_size() for s in opt.state.values()
                    for v in s.values() if torch.is_tensor(v) and v.dim() > 0)  # not `step`
        assert state == tool.OPTIMIZER_STATE_BYTES[name] * n, name
    for dtype, size in tool.FROZEN_BYTES.items():
        assert torch.empty(0, dtype=getattr(torch, dtype or 'float32')).element_size() == size


def test_activations_grow_linearly_with_the_batch():
    """The batch-1/batch-2 split extrapolates: batch 3 saves 3 x per sample + per step."""
    tool = load_tool('estimate_memory')
    unet = build_tiny_unet()
    for amp, dtype in (('none', None), ('bf16', torch.bfloat16)):
        per_sample, per_step = tool.activation_bytes(unet, 16, 8, amp, False)
        gating = UnitGating(PRUNING_SPACES.build(dict(type='paper')).find(unet))
        try:
            assert tool.saved_bytes(unet, gating, 3, 16, 8, dtype) == 3 * per_sample + per_step
        finally:
            gating.remove()


def test_command_line_prints_the_rows_and_their_total(capsys):
    tool = load_tool('estimate_memory')
    tool.main([f'{ROOT}/configs/alter/tiny_e4_s35.py', '--batch', '2', '--amp', 'none',
               '--optimizer', 'sgd'])
    lines = capsys.readouterr().out.splitlines()
    assert 'tiny_e4_s35.py: 32 px (latent 16x16), batch 2 per GPU, amp none' in lines[0]
    names = [line[2:48].strip() for line in lines[1:]]
    assert names == ['UNet weights (fp32)', 'UNet gradients (fp32)', 'optimiser state (sgd)',
                     'teacher UNet (float32)', 'VAE + text encoder (frozen)',
                     names[5], 'half-precision weight copies (autocast)',
                     'DDP gradient buckets (fp32)', 'total (before CUDA context/allocator slack)']
    assert names[5].startswith('activations (2 x ')
