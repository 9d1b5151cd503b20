# The embedded benchmark's dense teacher: plain diffusion training of the mini LDM on
# Shapes-T2I with 10 % caption dropout for classifier-free guidance, on the latent cache of
# configs/_base_/datasets/shapes_t2i_cache.py (make it first, with the command written there):
#   python tools/train.py configs/teacher/shapes_dense.py --work-dir work_dirs/shapes_teacher
#   python tools/export.py work_dirs/shapes_teacher/iter_12000.pth --half \
#       --out checkpoints/shapes_teacher
# The checkpoint's weights are the EMA weights (decay 0.999, a ~1000-iteration horizon).
_base_ = [
    '../_base_/models/shapes_ldm.py', '../_base_/datasets/shapes_t2i_cache.py',
    '../_base_/schedules/shapes_teacher.py', '../_base_/default_runtime.py'
]

model = dict(type='LatentDiffusion', cond_dropout=0.1, seed=0)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=1000, max_keep_ckpts=3))
