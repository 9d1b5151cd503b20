# Shapes-T2I as a latent cache: 160,000 `train` renders (seed 0) encoded once by the
# benchmark's autoencoder and text encoder (latents 4x8x8, MiniLM context 24x384, float16),
# so training runs neither. Make it (about 11 minutes on one CPU core; resumable) with
#   python tools/precompute_cache.py configs/teacher/shapes_dense.py \
#       --out work_dirs/shapes_cache --batch-size 64 --shard-size 4000 --dtype float16 \
#       --cfg-options train_dataloader.dataset._delete_=True \
#       train_dataloader.dataset.type=ShapesT2I train_dataloader.dataset.split=train \
#       train_dataloader.dataset.num_samples=160000 train_dataloader.dataset.seed=0
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='LatentCacheDataset', root='work_dirs/shapes_cache'))
