# Seeded random latents and text contexts at the tiny UNet's sizes.
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='RandomLatents', num_samples=64, latent_shape=(12, 16, 16),
                 context_shape=(8, 32), seed=0))
