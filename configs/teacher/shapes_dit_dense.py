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
# Cost: a step takes 1.04x the UNet teacher's (5.6 s vs 5.4 s per iteration at batch 64 on one
# thread, measured side by side over 20 iterations on a heavily loaded machine), so about
# 3.5 h on one quiet CPU thread (scaled from the UNet teacher's 3 h 20 min for 12,000).
_base_ = [
    '../_base_/models/shapes_dit.py', '../_base_/datasets/shapes_t2i_cache.py',
    '../_base_/schedules/shapes_teacher.py', '../_base_/default_runtime.py'
]

model = dict(type='LatentDiffusion', cond_dropout=0.1, seed=0)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=1000, max_keep_ckpts=3))
