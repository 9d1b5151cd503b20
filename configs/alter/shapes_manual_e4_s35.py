# Embedded benchmark, ablation "Manual": 4 experts on fixed equal-width timestep intervals.
_base_ = ['./shapes_e4_s35.py']

model = dict(hypernet=dict(router=dict(type='ManualRouter', _delete_=True)))
