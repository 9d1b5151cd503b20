# The paper's setting (sd21_e10_s35.py: 10 experts, sparsity 0.35, its loss weights,
# optimiser, 32k iterations at global batch 64, 512 px) on Stable Diffusion 1.5:
# epsilon-prediction, CLIP ViT-L/14 text encoder, SD2.1's topology (34 `paper` units).
# Assumed (the paper trains SD2.1 only): SD2.1's hyper-parameters carry over.
# Memory per GPU (tools/estimate_memory.py, 32 samples, bf16 AMP, AdamW, DDP): 50.8 GiB;
# 22.8 GiB with model.gradient_checkpointing=True and model.frozen_dtype='float16'.
# Weights: --cfg-options model.pretrained=/path/to/stable-diffusion-v1-5 (a local diffusers
# pipeline folder: unet/, vae/, text_encoder/, tokenizer/).
_base_ = ['./sd21_e10_s35.py']

model = dict(
    # runwayml/stable-diffusion-v1-5's unet/config.json: SD2.1's but for these keys.
    unet=dict(arch=dict(
        attention_head_dim=8,
        cross_attention_dim=768,
        sample_size=64,
        upcast_attention=False,
        use_linear_projection=False)),
    # SD1.5's noise schedule is SD2.1's (scaled_linear 0.00085-0.012) with epsilon-prediction.
    noise_scheduler=dict(prediction_type='epsilon'),
    text_encoder=dict(type='CLIPLTextEncoder'),
    resolution=512,
)
