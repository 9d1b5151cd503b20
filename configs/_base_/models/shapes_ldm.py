# The embedded benchmark's mini latent diffusion model: a UNet with SD2.1's topology
# (block types, depth, channel-change pattern: 34 `paper` units) at small widths, a small
# diffusers AutoencoderKL trained on Shapes-T2I renders (32x32x3 <-> 4x8x8, like SD's VAE
# at 1/4 of its downsampling; tools/train_shapes_vae.py) and frozen all-MiniLM-L6-v2 token
# states (384-d) as cross-attention context. v-prediction, as SD2.1-768.
model = dict(
    unet=dict(
        type='DiffusersUNet',
        pretrained=None,
        arch=dict(
            attention_head_dim=[2, 4, 8, 8],
            block_out_channels=[32, 64, 128, 128],
            cross_attention_dim=384,
            down_block_types=['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                              'CrossAttnDownBlock2D', 'DownBlock2D'],
            in_channels=4,
            layers_per_block=2,
            norm_num_groups=16,
            out_channels=4,
            sample_size=8,
            up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D',
                            'CrossAttnUpBlock2D'],
            use_linear_projection=True)),
    noise_scheduler=dict(
        num_train_timesteps=1000,
        beta_schedule='squaredcos_cap_v2',
        prediction_type='v_prediction',
        clip_sample=False),
    autoencoder=dict(type='SDAutoencoder', pretrained='checkpoints/shapes_vae', subfolder=None),
    text_encoder=dict(type='MiniLMTextEncoder', context_length=24),
    latent_scale=4,
    context_length=24,
    resolution=32,
)
