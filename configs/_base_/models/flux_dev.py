# FLUX.1-dev at 1024 px (rectified flow, guidance-distilled): 19 double-stream + 38
# single-stream `paper` units. Weights: `--cfg-options model.pretrained=/path/to/FLUX.1-dev`,
# a local diffusers pipeline folder (transformer/, vae/, text_encoder{,_2}/,
# tokenizer{,_2}/); tools/count_macs.py needs none (but 48 GB for float32 random weights).
model = dict(
    pretrained=None,
    unet=dict(
        type='DiffusersTransformer',
        model_class='FluxTransformer2DModel',
        pretrained=None,
        subfolder='transformer',
        # black-forest-labs/FLUX.1-dev's transformer/config.json.
        arch=dict(
            attention_head_dim=128,
            axes_dims_rope=[16, 56, 56],
            guidance_embeds=True,
            in_channels=64,
            joint_attention_dim=4096,
            num_attention_heads=24,
            num_layers=19,
            num_single_layers=38,
            patch_size=1,
            pooled_projection_dim=768)),
    # FLUX.1-dev's scheduler config; with dynamic shifting its training sigmas are unshifted.
    objective=dict(type='FlowMatchingObjective', weighting='logit_normal'),
    noise_scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                         base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                         max_image_seq_len=4096),
    # Flux's 16-channel VAE; its scaling (0.3611) and shift (0.1159) come from vae/.
    autoencoder=dict(type='SDAutoencoder'),
    # FLUX.1-dev is conditioned on the distilled guidance scale (3.5: FluxPipeline's default).
    text_encoder=dict(type='FluxTextEncoders', t5_length=512, guidance=3.5),
    latent_scale=8,
    context_length=512,  # T5 tokens
    resolution=1024,
)
