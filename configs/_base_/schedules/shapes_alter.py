# ALTER training on the embedded benchmark (any backbone), sized for the demo on a 2-core
# CPU: 400 iterations (tools/study.py trains 300-4000); AdamW, lr 1e-4 for the denoiser and
# 2e-3 for the hypernetwork after a 20-iteration warm-up; experts written every 100.
# Validated from iteration 500 on, every 500 and at the end: the routed student's images, also
# against the dense teacher's from the same prompt and noise (SSIM, PSNR).
_base_ = ['./shapes_validation.py']
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400)
optim_wrapper = dict(
    constructor='SubmoduleOptimWrapperConstructor',
    unet=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.01)),
    hypernet=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.0)))
warmup = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20)]
param_scheduler = dict(unet=warmup, hypernet=warmup)
custom_hooks = [dict(type='ExpertExportHook', interval=100)]
val_evaluator = [dict(type='AttributeAccuracy'), dict(type='AlignmentScore'),
                 dict(type='PairedFidelity', reference_key='teacher_image', name='teacher')]
