# DiT-XL/2 at 256 px (class-conditional ImageNet, learned variance): 28 `paper` units.
# Weights: `--cfg-options model.pretrained=/path/to/DiT-XL-2-256`, a local diffusers pipeline
# folder (transformer/, vae/ -- sd-vae-ft-ema); tools/count_macs.py needs none.
model = dict(
    pretrained=None,
    unet=dict(
        type='DiffusersTransformer',
        model_class='DiTTransformer2DModel',
        pretrained=None,
        subfolder='transformer',
        # facebook/DiT-XL-2-256's transformer/config.json.
        arch=dict(
            activation_fn='gelu-approximate',
            attention_bias=True,
            attention_head_dim=72,
            dropout=0.0,
            in_channels=4,
            norm_elementwise_affine=False,
            norm_num_groups=32,
            norm_type='ada_norm_zero',
            num_attention_heads=16,
            num_embeds_ada_norm=1000,
            num_layers=28,
            out_channels=8,
            patch_size=2,
            sample_size=32,
            upcast_attention=False)),
    # ADM's linear schedule; the output is epsilon and the variance interpolation.
    objective=dict(type='LearnedSigmaObjective'),
    noise_scheduler=dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule='linear',
        prediction_type='epsilon',
        clip_sample=False),
    autoencoder=dict(type='SDAutoencoder'),
    text_encoder=dict(type='ClassLabels', num_classes=1000),
    # DiT drops 10 % of the labels to the null class (classifier-free guidance).
    cond_dropout=0.1,
    latent_scale=8,  # sd-vae-ft-ema: 256 px -> 32x32 latent
    resolution=256,
)
