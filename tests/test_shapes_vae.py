"""The embedded benchmark's autoencoder: the committed one, and its training tool at tiny size."""
import json
from pathlib import Path

import torch

from alter.datasets.shapes import ShapesT2I, collate
from alter.models.conditioning import SDAutoencoder

from .conftest import ROOT, load_tool


def test_committed_autoencoder_reconstructs_renders():
    vae = SDAutoencoder(pretrained=f'{ROOT}/checkpoints/shapes_vae', subfolder=None)
    assert (vae.scale_factor, vae.latent_channels) == (4, 4)
    images = collate([ShapesT2I('val', 16, seed=0)[i] for i in range(16)])['image']
    with torch.no_grad():
        latents = vae.encode(images, torch.zeros(16, 4, 8, 8))  # the posterior mean
        recon = vae.decode(latents)
    assert latents.shape == (16, 4, 8, 8)
    assert 0.5 < latents.std() < 2  # scaling_factor makes the latents about unit variance
    mse = ((recon.clamp(-1, 1) - images) / 2).pow(2).mean()
    assert 10 * torch.log10(1 / mse) > 30  # dB, images in [0, 1]
    record = json.loads((Path(ROOT) / 'checkpoints' / 'shapes_vae' / 'training.json').read_text())
    assert record['val']['attribute_accuracy']['all'] > 0.98


def test_training_tool_writes_a_loadable_folder(tmp_path):
    tool = load_tool('train_shapes_vae')
    out = tmp_path / 'vae'
    tool.main(['--out', str(out), '--steps', '2', '--batch-size', '4', '--eval-samples', '8'])
    record = json.loads((out / 'training.json').read_text())
    assert record['command'].startswith('python tools/train_shapes_vae.py --out')
    assert record['train_images'] == 8 and set(record['val']) == {
        'scaling_factor', 'psnr_db', 'attribute_accuracy'}
    vae = SDAutoencoder(pretrained=str(out), subfolder=None)
    assert vae.scaling == record['val']['scaling_factor']
    assert not list(tmp_path.glob('.vae.*'))  # the temp folder was swapped in, none left
