# Stable Diffusion 3 Medium at 1024 px (MMDiT, rectified flow): 24 joint `paper` units, the
# last one ending the text stream. Weights: `--cfg-options model.pretrained=/path/to/
# stable-diffusion-3-medium-diffusers`, a local diffusers pipeline folder (transformer/,
# vae/, text_encoder{,_2,_3}/, tokenizer{,_2,_3}/); tools/count_macs.py needs none.
model = dict(
    pretrained=None,
    unet=dict(
        type='DiffusersTransformer',
        model_class='SD3Transformer2DModel',
        pretrained=None,
        subfolder='transformer',
        # stabilityai/stable-diffusion-3-medium-diffusers' transformer/config.json.
        arch=dict(
            attention_head_dim=64,
            caption_projection_dim=1536,
            in_channels=16,
            joint_attention_dim=4096,
            num_attention_heads=24,
            num_layers=24,
            out_channels=16,
            patch_size=2,
            pooled_projection_dim=2048,
            pos_embed_max_size=192,
            sample_size=128)),
    # Logit-normal sigmas on the scheduler's shifted (shift 3) training schedule.
    objective=dict(type='FlowMatchingObjective', weighting='logit_normal'),
    noise_scheduler=dict(num_train_timesteps=1000, shift=3.0),
    # SD3's 16-channel VAE; its scaling (1.5305) and shift (0.0609) come from vae/.
    autoencoder=dict(type='SDAutoencoder'),
    text_encoder=dict(type='SD3TextEncoders', t5_length=256),
    cond_dropout=0.1,
    latent_scale=8,
    context_length=333,  # 77 CLIP + 256 T5 tokens
    resolution=1024,
)
