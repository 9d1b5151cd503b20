default_scope = 'alter'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    # Validation results are logged at the iteration they were measured (not the epoch).
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=False, window_size=10)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
