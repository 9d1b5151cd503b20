# The paper's main setting: SD2.1, 10 experts, sparsity 0.35 (keep ratio 0.65),
# lambda_ratio 5, lambda_balance 1, KD weights 1, lambda_denoise 1e-4; AdamW with
# lr 1e-5 (UNet) / 7e-5 (hypernetwork), 32k iterations at global batch 64, 512 px.
_base_ = [
    '../_base_/models/alter_sd21.py', '../_base_/datasets/laion_512.py',
    '../_base_/schedules/alter_32k.py', '../_base_/default_runtime.py'
]

model = dict(num_experts=10, target_sparsity=0.35)
