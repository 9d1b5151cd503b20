# Stable Diffusion 2.1 (768 px, v-prediction) UNet: 865.9 M parameters, 34 `paper` units.
# Weights: `--cfg-options model.pretrained=/path/to/stable-diffusion-2-1`, a local diffusers
# pipeline folder (unet/, vae/, text_encoder/, tokenizer/); tools/count_macs.py needs none.
# With model.pretrained set, the folder's JSON configs replace the architecture, latent scale,
# noise schedule and resolution below (README, ALTER on your own model).
model = dict(
    pretrained=None,
    unet=dict(
        type='DiffusersUNet',
        pretrained=None,
        subfolder='unet',
        arch=dict(
            act_fn='silu',
            attention_head_dim=[5, 10, 20, 20],
            block_out_channels=[320, 640, 1280, 1280],
            cross_attention_dim=1024,
            down_block_types=['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                              'CrossAttnDownBlock2D', 'DownBlock2D'],
            downsample_padding=1,
            flip_sin_to_cos=True,
            freq_shift=0,
            in_channels=4,
            layers_per_block=2,
            mid_block_scale_factor=1,
            norm_eps=1e-5,
            norm_num_groups=32,
            out_channels=4,
            sample_size=96,
            up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D',
                            'CrossAttnUpBlock2D'],
            upcast_attention=True,
            use_linear_projection=True)),
    # SD2.1-768's noise schedule; v-prediction sets the denoising target.
    noise_scheduler=dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule='scaled_linear',
        prediction_type='v_prediction',
        clip_sample=False,
        steps_offset=1),
    # Frozen conditioning from the same local folder (model.pretrained).
    autoencoder=dict(type='SDAutoencoder'),
    text_encoder=dict(type='CLIPTextEncoder'),
    latent_scale=8,  # VAE downsampling: 768 px -> 96x96 latent
    context_length=77,  # CLIP tokens
    resolution=768,
)
