# The paper's schedule: AdamW, 250-iteration linear warm-up, lr 1e-5 (UNet) and
# 7e-5 (hypernetwork), 32k iterations at global batch 64.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=32000)
optim_wrapper = dict(
    constructor='SubmoduleOptimWrapperConstructor',
    unet=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-5, weight_decay=1e-2)),
    hypernet=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=7e-5, weight_decay=0.0)))
warmup = [dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=250)]
param_scheduler = dict(unet=warmup, hypernet=warmup)
custom_hooks = [dict(type='ExpertExportHook', interval=1000)]
