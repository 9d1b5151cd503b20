# ALTER on SD2.1 with the paper's hypernetwork and loss weights (ALTER_SPEC §4-5).
_base_ = ['./sd21_unet.py']

model = dict(
    type='ALTER',
    num_experts=10,
    target_sparsity=0.35,
    # T_end: the hypernetwork trains for 2 epochs of 0.3 M images at global batch 64.
    hypernet_iters=9375,
    space=dict(type='paper'),
    hypernet=dict(
        expert_generator=dict(type='HyperExperts', input_dim=64, hidden_dim=256),
        router=dict(type='HyperNetRouter', hidden_dim=64),
        gate_offset=4.0,
        gate_tau=0.4,
        route_tau=0.4,
        estimator='straight_through'),
    regularizer=dict(type='LogRatio'),
    loss_weights=dict(denoise=1e-4, out_kd=1.0, feat_kd=1.0, ratio=5.0, balance=1.0),
    schedule='joint',
    # Captions dropped 10 % of the time keep the unconditional prediction, which
    # classifier-free guidance uses, trained under pruning (beyond the paper's recipe).
    cond_dropout=0.1,
    resolution=512,  # the paper trains at 512 px; MAC costs are counted there
    mac_convention='fvcore',
)
