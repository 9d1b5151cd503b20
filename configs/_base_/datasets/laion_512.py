# LAION-Aesthetics v2 6.5+ (0.3 M images) as webdataset-style tar shards, SD-style 512 px crops.
# Point `train_dataloader.dataset.shards` at your shards, e.g. data/laion/{00000..00029}.tar.
train_dataloader = dict(
    batch_size=32,  # per GPU: 2 GPUs give the paper's global batch of 64
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='TarShardDataset',
        shards='data/laion-aesthetics-6.5/{00000..00029}.tar',
        transform=dict(type='SDImageTransform', resolution=512, center_crop=True,
                       random_flip=True)))
