# Second phase of the embedded benchmark's dense teacher: 2000 more iterations from the
# first phase's EMA weights, a fresh warm-up and a lower cosine learning rate (the first
# phase's loss was still falling: 0.100 at 1100 iterations, 0.088 at 1500).
# Reproduce (after configs/teacher/shapes_dense.py):
#   python tools/train.py configs/teacher/shapes_dense_continue.py \
#       --work-dir work_dirs/shapes_dense_continue
#   python tools/export.py work_dirs/shapes_dense_continue/iter_2000.pth --half \
#       --out checkpoints/shapes_teacher
_base_ = ['./shapes_dense.py']

load_from = 'work_dirs/shapes_dense/iter_1500.pth'  # phase 1 (its weights are the EMA weights)
model = dict(seed=1)  # other timestep/noise draws than phase 1
randomness = dict(seed=1)
train_cfg = dict(max_iters=2000)
optim_wrapper = dict(unet=dict(optimizer=dict(lr=5e-4)))
param_scheduler = dict(_delete_=True, unet=[
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', eta_min=5e-5, by_epoch=False, begin=50, end=2000),
])
