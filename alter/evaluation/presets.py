"""Named evaluation protocols of ``tools/test.py``; command-line options override them.

* ``shapes`` — the embedded benchmark: 300 Shapes-T2I ``val`` prompts, DDIM 20 steps,
  guidance 3, its proxy metrics (EfficientNet-Lite0 FID/KID, attribute accuracy,
  LiT-style alignment) plus SSIM/PSNR to the dense model, MACs and latency.
* ``coco2014-30k`` — the paper's Table 1 protocol (ALTER_SPEC.md §8): 30k COCO-2014
  ``val`` captions (``--prompts captions_val2014.json``), 768 px, PNDM, guidance 7.5,
  generated and reference images resized to 256 px for FID (Inception, local weights),
  CLIP score with open_clip ViT-g-14 ``laion2b_s12b_b42k``.
* ``coco2017-5k`` — the paper's Table 2 protocol: 5k COCO-2017 ``val`` captions, the
  same settings, plus CMMD (CLIP ViT-L/14-336).

A preset names no files: prompts, reference images and weights are passed as options.
"""
from typing import Dict

PRESETS: Dict[str, dict] = {
    'shapes': dict(prompts='shapes', num_prompts=300, steps=20, scheduler='ddim', guidance=3.0,
                   resolution=None, fid_size=None,
                   metrics=['proxy_fid', 'proxy_kid', 'attribute_accuracy', 'alignment', 'ssim',
                            'psnr', 'macs', 'latency']),
    'coco2014-30k': dict(prompts=None, num_prompts=30000, steps=20, scheduler='pndm',
                         guidance=7.5, resolution=768, fid_size=256,
                         metrics=['fid', 'clip', 'macs', 'latency']),
    'coco2017-5k': dict(prompts=None, num_prompts=5000, steps=20, scheduler='pndm',
                        guidance=7.5, resolution=768, fid_size=256,
                        metrics=['fid', 'clip', 'cmmd', 'macs', 'latency']),
}
