# SD2.1, 4 experts, sparsity 0.35; otherwise the paper's setting.
_base_ = ['./sd21_e10_s35.py']

model = dict(num_experts=4)
