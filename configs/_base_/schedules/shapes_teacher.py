# Dense-teacher training on the embedded benchmark (any backbone): 12,000 iterations of
# AdamW (lr 1e-3 after a 200-iteration warm-up, cosine to 5e-5), gradients clipped at 1,
# EMA of the weights (decay 0.999, a ~1000-iteration horizon; checkpoints hold the EMA).
# Validated every 1000 iterations and at the end (the trained weights, not the EMA).
_base_ = ['./shapes_validation.py']
train_cfg = dict(type='IterBasedTrainLoop', max_iters=12000, val_begin=1000, val_interval=1000)
optim_wrapper = dict(
    constructor='SubmoduleOptimWrapperConstructor',
    unet=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01),
              clip_grad=dict(max_norm=1.0)))
param_scheduler = dict(unet=[
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', eta_min=5e-5, by_epoch=False, begin=200, end=12000),
])
custom_hooks = [dict(type='EMAHook', momentum=1e-3, update_buffers=False)]
