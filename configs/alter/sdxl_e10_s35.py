# The paper's setting (sd21_e10_s35.py: 10 experts, sparsity 0.35, its loss weights and
# optimiser, 32k iterations at global batch 64) on SDXL-base 1.0 at its native 1024 px:
# epsilon-prediction, two text encoders (CLIP ViT-L + OpenCLIP ViT-bigG: 2048-d states,
# pooled text embeds, add_time_ids), 83 `paper` units (13 resnets, 70 transformer blocks;
# 24 in the `block` space).
# Assumed (the paper trains SD2.1 only): SD2.1's hyper-parameters carry over; global batch
# 64 as 8 GPUs x 8, with --fsdp (README, Supported backbones: 54 GiB of static parts per GPU
# under DDP before activations); time ids (1024, 1024, 0, 0, 1024, 1024).
# Weights: --cfg-options model.pretrained=/path/to/stable-diffusion-xl-base-1.0 (a local
# diffusers pipeline folder: unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/,
# tokenizer_2/).
_base_ = ['./sd21_e10_s35.py']

model = dict(
    # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json: SD2.1's keys where equal.
    unet=dict(arch=dict(
        addition_embed_type='text_time',
        addition_embed_type_num_heads=64,
        addition_time_embed_dim=256,
        attention_head_dim=[5, 10, 20],
        block_out_channels=[320, 640, 1280],
        cross_attention_dim=2048,
        down_block_types=['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
        projection_class_embeddings_input_dim=2816,
        sample_size=128,
        transformer_layers_per_block=[1, 2, 10],
        up_block_types=['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
        upcast_attention=None)),
    # SDXL's noise schedule is SD2.1's (scaled_linear 0.00085-0.012) with epsilon-prediction.
    noise_scheduler=dict(prediction_type='epsilon'),
    # SDXL's VAE has SD's architecture (scaling factor 0.13025, read from its folder).
    text_encoder=dict(type='SDXLTextEncoders', resolution=1024),
    resolution=1024,
)
train_dataloader = dict(batch_size=8, dataset=dict(transform=dict(resolution=1024)))
