"""Train the embedded benchmark's autoencoder: a small diffusers ``AutoencoderKL`` on Shapes-T2I.

    python tools/train_shapes_vae.py --out checkpoints/shapes_vae

32x32 RGB renders <-> 4x8x8 latents (downsampling 4, like SD's VAE by 8 at 512 px). It
streams fresh ``train`` renders (no image is seen twice) with an L1 + MSE reconstruction
loss and SD's small KL weight, then sets ``scaling_factor`` to 1 / std of the latents of
``val`` renders (unit-variance latents, as SD's 0.18215 does) and writes a diffusers
folder (``config.json`` + safetensors) that ``SDAutoencoder(pretrained=OUT,
subfolder=None)`` loads, with ``training.json``: command, settings, time, reconstruction
PSNR and the attribute classifier's accuracy on reconstructions of ``val`` renders.
"""
import argparse
import platform
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from alter.datasets.shapes import ShapesT2I, collate
from alter.evaluation.attributes import load_attribute_classifier, score, summarise
from alter.utils.io import atomic_write_json, replace_folder
from alter.utils.render_training import train_on_renders

ARCH = dict(in_channels=3, out_channels=3, down_block_types=['DownEncoderBlock2D'] * 3,
            up_block_types=['UpDecoderBlock2D'] * 3, block_out_channels=[32, 64, 64],
            layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=32,
            mid_block_add_attention=False)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='diffusers folder to write')
    parser.add_argument('--steps', type=int, default=4000)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--kl-weight', type=float, default=1e-6)
    parser.add_argument('--eval-samples', type=int, default=2000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    return parser.parse_args(argv)


def renders(split: str, first: int, count: int, seed: int) -> dict:
    dataset = ShapesT2I(split, first + count, seed=seed)
    return collate([dataset[i] for i in range(first, first + count)])


@torch.no_grad()
def evaluate(vae: AutoencoderKL, num_samples: int, seed: int) -> dict:
    """Scaling factor, reconstruction PSNR (dB, images in [0, 1]) and attribute accuracy
    of reconstructions (posterior mean) of ``val`` renders, every label scored."""
    classifier = load_attribute_classifier()
    latents, mse, results = [], [], []
    for start in range(0, num_samples, 250):
        batch = renders('val', start, min(250, num_samples - start), seed)
        mean = vae.encode(batch['image']).latent_dist.mode()
        recon = vae.decode(mean).sample.clamp(-1, 1)
        latents.append(mean)
        mse.append(((recon - batch['image']) / 2).pow(2).flatten(1).mean(1))
        results += score(classifier.predict(recon), batch['attributes'], every_label=True)
    mse = torch.cat(mse)
    return dict(scaling_factor=1.0 / torch.cat(latents).std().item(),
                psnr_db=(-10 * torch.log10(mse.clamp_min(1e-10))).mean().item(),
                attribute_accuracy=summarise(results))


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    vae = AutoencoderKL(**ARCH)

    def step_loss(batch: dict):
        images = batch['image']
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        l1, mse = F.l1_loss(recon, images), F.mse_loss(recon, images)
        kl = posterior.kl().mean() / images[0].numel()  # per pixel, as the losses above
        return l1 + mse + args.kl_weight * kl, dict(l1=l1, mse=mse, kl=kl)

    train_seconds = train_on_renders(vae, step_loss, args.steps, args.batch_size, args.lr,
                                     args.seed, pct_start=0.05)

    vae.eval()
    result = evaluate(vae, args.eval_samples, args.seed)
    vae.register_to_config(scaling_factor=result['scaling_factor'])
    accuracy = result['attribute_accuracy']
    print(f'val: PSNR {result["psnr_db"]:.2f} dB, scaling_factor {result["scaling_factor"]:.4f}, '
          'attribute accuracy of reconstructions ' +
          '  '.join(f'{k}={v:.4f}' for k, v in accuracy.items()))
    record = dict(what='autoencoder of the embedded benchmark (Shapes-T2I, 32x32 RGB <-> 4x8x8)',
                  command=' '.join(shlex.quote(a) for a in ['python', 'tools/train_shapes_vae.py'] +
                                  (sys.argv[1:] if argv is None else list(argv))),
                  settings=vars(args), train_seconds=round(train_seconds, 1),
                  train_images=args.steps * args.batch_size, eval_samples=args.eval_samples,
                  val=result,
                  versions=dict(torch=torch.__version__, python=platform.python_version()))

    def write(folder: Path) -> None:
        vae.save_pretrained(folder, safe_serialization=True)
        atomic_write_json(folder / 'training.json', record)

    replace_folder(Path(args.out), write)
    print(f'train {train_seconds:.1f} s ({args.threads} thread(s)); wrote {args.out}')


if __name__ == '__main__':
    main()
