# Ablation "Manual": 4 experts on fixed, equal-width timestep intervals; masks still learned.
_base_ = ['./sd21_e4_s35.py']

model = dict(hypernet=dict(router=dict(type='ManualRouter', _delete_=True)))
