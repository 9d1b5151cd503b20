# The shapes LDM's UNet at toy widths (SD2.1's topology: same block types, depth and
# channel-change pattern, so 34 `paper` / 38 `shortcut` units) with toy contexts; used
# by tests and tools/train.py's smallest runs on random latents (no encoders), which are
# 12x16x16 (more spatial positions than the shapes model's 4x8x8 exercise more code).
_base_ = ['./shapes_ldm.py']

model = dict(
    unet=dict(
        arch=dict(
            attention_head_dim=[2, 2, 4, 4],
            block_out_channels=[16, 32, 64, 64],
            cross_attention_dim=32,
            in_channels=12,
            out_channels=12,
            sample_size=16,
            norm_num_groups=8)),
    noise_scheduler=dict(prediction_type='epsilon'),
    autoencoder=None,
    text_encoder=None,
    context_length=8,
    latent_scale=2,  # 32 px <-> the 16x16 latents above (MAC counts and samplers)
)
