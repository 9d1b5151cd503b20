# A tiny ALTER run for tests and quick checks: SD2.1 topology at toy widths,
# 4 experts, sparsity 0.35, random latents; seconds per iteration on one CPU core.
_base_ = [
    '../_base_/models/tiny_unet.py', '../_base_/datasets/random_latents_tiny.py',
    '../_base_/default_runtime.py'
]

model = dict(
    type='ALTER',
    num_experts=4,
    target_sparsity=0.35,
    hypernet_iters=30,
    space=dict(type='paper'),
    hypernet=dict(estimator='straight_through'),
    regularizer=dict(type='LogRatio'),
    loss_weights=dict(denoise=1.0, out_kd=1.0, feat_kd=1.0, ratio=5.0, balance=1.0),
    schedule='joint')

train_cfg = dict(type='IterBasedTrainLoop', max_iters=40)
optim_wrapper = dict(
    constructor='SubmoduleOptimWrapperConstructor',
    unet=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)),
    hypernet=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=3e-2)))
warmup = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]
param_scheduler = dict(unet=warmup, hypernet=warmup)
custom_hooks = [dict(type='ExpertExportHook', interval=10)]
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=20))
