# The embedded benchmark's dense DiT teacher: the tiny PixArt-style transformer of
# configs/_base_/models/shapes_dit.py trained exactly as the UNet teacher (shapes_dense.py:
# same latent cache, caption dropout, schedule and EMA). Make the latent cache first (the
# command is in configs/_base_/datasets/shapes_t2i_cache.py; the UNet teacher's cache
# serves as it is), then:
#   python tools/train.py configs/teacher/shapes_dit_dense.py \
#       --work-dir work_dirs/shapes_dit_teacher
#   python tools/export.py work_dirs/shapes_dit_teacher/iter_12000.pth --half \
#       --out checkpoints/shapes_dit_teacher
# The checkpoint's weights are the EMA weights (decay 0.999, a ~1000-iteration horizon).
# Cost: 12,000 iterations in 1 h 46 min on the 2-core CPU (0.65-0.80 s per iteration on one
# thread, 0.33-0.45 s on two); checkpoints/shapes_dit_teacher/training.json records the run
# and the teacher's attribute accuracy (all-correct 0.61 at 20 steps; the UNet teacher 0.58).
_base_ = [
    '../_base_/models/shapes_dit.py', '../_base_/datasets/shapes_t2i_cache.py',
    '../_base_/schedules/shapes_teacher.py', '../_base_/default_runtime.py'
]

model = dict(type='LatentDiffusion', cond_dropout=0.1, seed=0)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=1000, max_keep_ckpts=3))
