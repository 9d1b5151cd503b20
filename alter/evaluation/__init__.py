"""Evaluators: the embedded benchmark's proxies (FID/KID on EfficientNet-Lite0, attribute
accuracy, alignment score), the paper's metrics (Inception FID, CLIP score, CMMD, SSIM/PSNR),
paired fidelity to a reference image, and the per-timestep denoising gap.

Importing registers the feature extractors (``MODELS``), metrics (``METRICS``) and
reference image folders (``DATASETS``);
it loads no weights. Proxy numbers are named after their feature space or model
(``fid_efficientnet_lite0``, ``alignment_lit_minilm_effnet``), never "FID" or
"CLIP score" alone.
"""
from alter.evaluation import (alignment, attributes, clip, denoising_gap,  # noqa: F401
                              distances, features, fidelity, metrics, reference)
