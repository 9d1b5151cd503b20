# Embedded benchmark, ablation "Static": one expert for every timestep.
_base_ = ['./shapes_e4_s35.py']

model = dict(num_experts=1, hypernet=dict(router=dict(type='StaticRouter', _delete_=True)))
