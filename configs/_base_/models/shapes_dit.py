# The embedded benchmark's second backbone: a tiny PixArt-style diffusion transformer in place
# of the UNet of shapes_ldm.py, everything else shared with it (the Shapes VAE's 4x8x8
# latents, frozen all-MiniLM-L6-v2 token states as context, the noise schedule and the
# v-prediction target), so the two backbones differ in the denoiser alone.
# * sized to the UNet's cost: patch size 2 (the 8x8 latent is a 4x4 grid of 16 tokens, as
#   DiT-XL/8 sees its 32x32 latents) and 12 blocks of width 192 (3 heads of 64), i.e. 12
#   `paper` units, 7.55 M parameters (the UNet: 9.40 M), 124 M MACs per call (fvcore; the
#   UNet: 77 M, in small-map convolutions that run slower per MAC): a training step takes
#   about the UNet's time on a CPU; patch size 1 (64 tokens) costs 2-3x more at any useful width;
# * caption_channels=384: PixArt's own caption projection (Linear-GELU-Linear) maps the
#   MiniLM states to the blocks' width, as it maps T5's 4096-d states in PixArt-alpha; the
#   [PAD] states are attended like the UNet attends them (no attention mask);
# * out_channels=4: no learned variance. The project's samplers (DDIM, PNDM, DPM-Solver++,
#   ...) use the fixed DDPM variances, and ADM's variational-bound term, which alone trains
#   a variance output, is not part of LearnedSigmaObjective: from scratch it would learn
#   nothing. The UNet's DDPMObjective with v-prediction, on the cosine schedule, avoids the
#   epsilon-parameterisation's ill-conditioned x0 at the last timesteps (alpha_bar ~ 0).
_base_ = ['./shapes_ldm.py']

model = dict(
    unet=dict(
        _delete_=True,
        type='DiffusersTransformer',
        model_class='PixArtTransformer2DModel',
        pretrained=None,
        arch=dict(
            attention_head_dim=64,
            caption_channels=384,
            cross_attention_dim=192,
            in_channels=4,
            num_attention_heads=3,
            num_layers=12,
            out_channels=4,
            patch_size=2,
            sample_size=8)))
