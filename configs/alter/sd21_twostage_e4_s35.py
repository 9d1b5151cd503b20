# Ablation "TwoStage": the hypernetwork learns masks and routing with the UNet frozen
# until T_end, then the UNet is fine-tuned under the frozen table.
_base_ = ['./sd21_e4_s35.py']

model = dict(schedule='two_stage')
