"""tools/estimate_memory.py: activation bytes measured on a real (tiny) UNet."""
from alter.engine.parallel import sharded_modules
from alter.registry import MODELS

from .conftest import build_tiny_unet, load_tool


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
