# ALTER on the embedded benchmark's DiT (configs/_base_/models/shapes_dit.py): 4 experts,
# sparsity 0.35, from the dense DiT teacher in checkpoints/shapes_dit_teacher (made by the
# commands in configs/teacher/shapes_dit_dense.py). Everything else is shapes_e4_s35.py's,
# the UNet's setting: the same loss weights (budget weight 100, set on the UNet teacher; on
# the DiT teacher the demo's run reaches keep ratio 0.643 at T_end, target 0.65), router,
# hypernetwork, schedule (400 iterations at batch 16, T_end = 200) and data. The units are
# the 12 transformer blocks, which hold 97.5 % of the model's MACs.
_base_ = [
    '../_base_/models/shapes_dit.py', '../_base_/datasets/shapes_t2i.py',
    '../_base_/schedules/shapes_alter.py', '../_base_/default_runtime.py'
]

model = dict(
    type='ALTER',
    pretrained='checkpoints/shapes_dit_teacher',
    num_experts=4,
    target_sparsity=0.35,
    hypernet_iters=200,
    space=dict(type='paper'),
    hypernet=dict(
        expert_generator=dict(type='HyperExperts'),
        router=dict(type='HyperNetRouter'),
        estimator='straight_through'),
    regularizer=dict(type='LogRatio'),
    loss_weights=dict(denoise=1e-4, out_kd=1.0, feat_kd=1.0, ratio=100.0, balance=1.0),
    schedule='joint',
    cond_dropout=0.1)

train_dataloader = dict(batch_size=16)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=100000, max_keep_ckpts=1))
