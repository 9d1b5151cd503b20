# A tiny UNet with SD2.1's topology (same block types, depth and channel-change
# pattern, so the same 34 `paper` / 38 `shortcut` units) at toy widths; used by
# tests. Latent = pixel_unshuffle(x, 2) of 32x32 RGB -> 12x16x16.
model = dict(
    unet=dict(
        type='DiffusersUNet',
        pretrained=None,
        arch=dict(
            attention_head_dim=[2, 2, 4, 4],
            block_out_channels=[16, 32, 64, 64],
            cross_attention_dim=32,
            down_block_types=['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                              'CrossAttnDownBlock2D', 'DownBlock2D'],
            in_channels=12,
            layers_per_block=2,
            norm_num_groups=8,
            out_channels=12,
            sample_size=16,
            up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D',
                            'CrossAttnUpBlock2D'],
            use_linear_projection=True)),
    noise_scheduler=dict(
        num_train_timesteps=1000,
        beta_schedule='squaredcos_cap_v2',
        prediction_type='epsilon',
        clip_sample=False),
    latent_scale=2,
    context_length=8,
    resolution=32,
)
