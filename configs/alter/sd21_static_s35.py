# Ablation "Static": one expert for every timestep (plain layer pruning + fine-tuning).
_base_ = ['./sd21_e10_s35.py']

model = dict(num_experts=1, hypernet=dict(router=dict(type='StaticRouter', _delete_=True)))
