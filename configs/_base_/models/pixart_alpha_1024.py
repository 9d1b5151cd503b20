# PixArt-alpha XL/2 at 1024 px (T5-XXL text, learned variance, resolution and aspect-ratio
# conditions): 28 `paper` units. Weights: `--cfg-options model.pretrained=/path/to/
# PixArt-XL-2-1024-MS`, a local diffusers pipeline folder (transformer/, vae/,
# text_encoder/, tokenizer/); tools/count_macs.py needs none.
model = dict(
    pretrained=None,
    unet=dict(
        type='DiffusersTransformer',
        model_class='PixArtTransformer2DModel',
        pretrained=None,
        subfolder='transformer',
        # PixArt-alpha/PixArt-XL-2-1024-MS's transformer/config.json.
        arch=dict(
            activation_fn='gelu-approximate',
            attention_bias=True,
            attention_head_dim=72,
            caption_channels=4096,
            cross_attention_dim=1152,
            dropout=0.0,
            in_channels=4,
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            norm_num_groups=32,
            norm_type='ada_norm_single',
            num_attention_heads=16,
            num_embeds_ada_norm=1000,
            num_layers=28,
            out_channels=8,
            patch_size=2,
            sample_size=128,
            upcast_attention=False)),
    objective=dict(type='LearnedSigmaObjective'),
    noise_scheduler=dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule='linear',
        prediction_type='epsilon'),
    autoencoder=dict(type='SDAutoencoder'),
    text_encoder=dict(type='PixArtTextEncoder'),
    cond_dropout=0.1,
    latent_scale=8,
    context_length=120,  # T5 tokens
    resolution=1024,
)
