# Embedded benchmark, ablation "TwoStage": masks and routing with the UNet frozen until
# T_end, then UNet fine-tuning under the frozen table.
_base_ = ['./shapes_e4_s35.py']

model = dict(schedule='two_stage')
