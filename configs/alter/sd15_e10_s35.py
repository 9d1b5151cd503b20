# The paper's setting (sd21_e10_s35.py: 10 experts, sparsity 0.35, its loss weights,
# optimiser, 32k iterations at global batch 64, 512 px) on Stable Diffusion 1.5:
# epsilon-prediction, CLIP ViT-L/14 text encoder, 36 `paper` units.
# Assumed (the paper trains SD2.1 only): SD2.1's hyper-parameters carry over.
# Weights: --cfg-options model.pretrained=/path/to/stable-diffusion-v1-5 (a local diffusers
# pipeline folder: unet/, vae/, text_encoder/, tokenizer/).
_base_ = ['./sd21_e10_s35.py']

model = dict(
    # runwayml/stable-diffusion-v1-5's unet/config.json.
    unet=dict(arch=dict(
        _delete_=True,
        act_fn='silu',
        attention_head_dim=8,
        block_out_channels=[320, 640, 1280, 1280],
        cross_attention_dim=768,
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
        sample_size=64,
        up_block_types=['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D',
                        'CrossAttnUpBlock2D'])),
    # SD1.5's noise schedule is SD2.1's (scaled_linear 0.00085-0.012) with epsilon-prediction.
    noise_scheduler=dict(prediction_type='epsilon'),
    text_encoder=dict(type='CLIPLTextEncoder'),
    resolution=512,
)
