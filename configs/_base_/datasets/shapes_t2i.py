# Shapes-T2I: procedural 32x32 captioned images, rendered on the fly (a new scene per index).
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='alter.shapes_collate'),
    dataset=dict(type='ShapesT2I', split='train', num_samples=500_000, seed=0))
