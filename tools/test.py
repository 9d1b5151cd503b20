"""Generate images for a prompt set with a trained checkpoint and score them.

    python tools/test.py CONFIG CHECKPOINT [--preset shapes|coco2014-30k|coco2017-5k]
        [--prompts FILE] [--num-prompts N] [--steps 20] [--scheduler ddim] [--guidance 3]
        [--resolution PX] [--seed 0] [--metrics NAME...] [--work-dir DIR]
        [--launcher none|pytorch] ...
    tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [options as above]

CHECKPOINT is an ALTER checkpoint directory (``unet/`` + ``experts.json``), a dense
one (``unet/`` only), or ``dense`` for the config's own pretrained UNet; its results
row is labelled ``<--label>-<steps>`` (default label: the checkpoint folder's name).
Images are saved as PNGs under ``WORK_DIR/images/<method>/`` (a stopped run continues
where it stopped), then scored; the dense UNet's comparison images go to a store shared
by every work dir, ``--dense-store`` (default ``work_dirs/test/dense``), one folder per
setting, so they are generated once. Metrics: ``fid`` (pytorch-fid Inception, ``--inception-weights``;
``--fid-mode clean-fid-legacy-pytorch`` quantises to 8 bit first as clean-fid does),
``clip`` (open_clip, ``--clip-weights``), ``cmmd`` (CLIP ViT-L/14-336, ``--cmmd-weights``),
``ssim``/``psnr`` against the dense UNet's images from the same seeds, ``macs`` (per UNet
call and per generation, both conventions, guidance = 2 calls), ``latency`` (median of
interleaved repeats after warm-up, device named), and the embedded benchmark's proxies
``proxy_fid``, ``proxy_kid``, ``attribute_accuracy``, ``alignment``. Every quality
number comes with its bootstrap 95 % interval over prompts (``<metric>_ci_low``,
``_ci_high``). Writes ``results.json``, ``results.csv``, ``per_image.csv`` (the per-prompt
scores, for paired comparisons between checkpoints) and ``manifest.json`` (every
setting) to WORK_DIR. A store of images is keyed on what made them (the prompt texts,
the UNet's weights fingerprint, the experts, the model config and the sampler settings):
reopening it after any of these changed is refused.

With ``--launcher pytorch`` (torchrun, ``tools/dist_test.sh``) each rank generates every
N-th prompt into the same stores (N ranks), on its own GPU (gloo on CPU); prompt i keeps
seed ``SEED*100000 + i``, so the images do not depend on N. Once every rank is done,
rank 0 alone scores all images and writes the results; the manifest records N.
"""
import argparse
import hashlib
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from mmengine.config import DictAction
from mmengine.dist import get_dist_info, init_dist
from mmengine.evaluator import Evaluator
from tqdm import tqdm

from alter.evaluation.benchmark import benchmark_prompts
from alter.evaluation.fidelity import psnr, ssim
from alter.evaluation.image_store import ImageStore, from_uint8, to_uint8
from alter.evaluation.intervals import summary
from alter.evaluation.presets import PRESETS
from alter.evaluation.prompts import load_prompts
from alter.evaluation.reference import resize_square
from alter.inference.experts import ExpertSet, load_experts, load_unet, weights_fingerprint
from alter.inference.pipeline import TextToImage, generation_gmacs
from alter.inference.routing import ExpertRouter
from alter.models.diffusion import LatentDiffusion
from alter.registry import METRICS, PRUNING_SPACES
from alter.units.macs import CONVENTIONS, MacTable, architecture_difference, mac_table
from alter.utils.cli import InputError, positive_int, run_tool
from alter.utils.config import load_config
from alter.utils.io import atomic_write, atomic_write_json
from alter.utils.timing import device_name, device_sync, interleaved

METRIC_NAMES = ('fid', 'clip', 'cmmd', 'ssim', 'psnr', 'macs', 'latency', 'proxy_fid',
                'proxy_kid', 'attribute_accuracy', 'alignment')
SHAPES_ONLY = ('attribute_accuracy', 'alignment')  # need Shapes-T2I attribute labels


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config (architecture, conditioning, noise schedule)')
    parser.add_argument('checkpoint', help="checkpoint directory, or 'dense' for the config's UNet")
    parser.add_argument('--preset', default='shapes', choices=sorted(PRESETS))
    parser.add_argument('--prompts', help="COCO captions JSON, CSV/TSV, .txt, or 'shapes'")
    parser.add_argument('--caption-column', default='caption', help='CSV/TSV caption column')
    parser.add_argument('--num-prompts', type=positive_int)
    parser.add_argument('--steps', type=positive_int)
    parser.add_argument('--dense-steps', type=positive_int,
                        help='steps of the dense images SSIM/PSNR compare with (default --steps)')
    parser.add_argument('--scheduler', help='ddim, pndm, dpm++, euler or unipc')
    parser.add_argument('--guidance', type=float)
    parser.add_argument('--resolution', type=positive_int, help='pixels (default: the config\'s)')
    parser.add_argument('--seed', type=int, default=0, help='prompt i uses seed SEED*100000 + i')
    parser.add_argument('--batch-size', type=positive_int, default=16)
    parser.add_argument('--metrics', nargs='+', choices=METRIC_NAMES)
    parser.add_argument('--dense-baseline', action='store_true',
                        help='also score the dense UNet\'s images (a second results row)')
    parser.add_argument('--fid-size', type=positive_int,
                        help='FID/KID resize (default: the preset\'s)')
    parser.add_argument('--fid-mode', default='pytorch-fid',
                        choices=['pytorch-fid', 'clean-fid-legacy-pytorch'])
    parser.add_argument('--inception-weights', help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument('--reference', help='folder of real images for FID/KID/CMMD')
    parser.add_argument('--reference-stats', help='FID statistics file (FeatureStats .npz)')
    parser.add_argument('--clip-model', default='ViT-g-14')
    parser.add_argument('--clip-pretrained', default='laion2b_s12b_b42k',
                        help='open_clip pretrained tag the weights file is (recorded)')
    parser.add_argument('--clip-weights', help='open_clip weights file of --clip-model')
    parser.add_argument('--cmmd-weights', help='open_clip ViT-L-14-336 (openai) weights file')
    parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                        help='DataLoader processes reading reference images for FID/KID/CMMD '
                        '(default: 4 or the number of CPUs if fewer; 0 reads them in this one)')
    parser.add_argument('--latency-repeats', type=positive_int, default=5)
    parser.add_argument('--latency-warmup', type=int, default=1)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--work-dir', help='default work_dirs/test/<checkpoint name>')
    parser.add_argument('--label', help="results label (default: the checkpoint folder's name)")
    parser.add_argument('--dense-store', default='work_dirs/test/dense',
                        help='where dense comparison images are kept, one folder per setting')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                        help='job launcher (pytorch = torchrun, see tools/dist_test.sh)')
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f'--workers must be 0 or more, got {args.workers}')
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.dense_steps = args.dense_steps or args.steps
    if args.prompts is None:
        parser.error(f'preset {args.preset!r} needs --prompts (e.g. COCO captions_val*.json)')
    if args.prompts != 'shapes' and set(args.metrics) & set(SHAPES_ONLY):
        parser.error(f'{sorted(set(args.metrics) & set(SHAPES_ONLY))} need the embedded '
                     "benchmark's labels: use --prompts shapes or leave them out of --metrics")
    return args


def prompt_set(args) -> List[dict]:
    if args.prompts == 'shapes':
        return benchmark_prompts(args.num_prompts, args.seed)[0]
    return load_prompts(args.prompts, args.num_prompts, args.caption_column)


def reference_cfg(args, size: Optional[int]) -> Optional[dict]:
    """Real images of the distances: the benchmark's renders, or ``--reference``."""
    if args.reference:
        return dict(type='ReferenceImages', root=args.reference, size=size,
                    limit=args.num_prompts)
    if args.prompts == 'shapes':
        return None  # the metrics' default: Shapes-T2I val renders
    if 'cmmd' in args.metrics or ('fid' in args.metrics and args.reference_stats is None):
        raise SystemExit('fid/cmmd need real images: pass --reference DIR (e.g. COCO val2014/) '
                         'or, for FID only, --reference-stats FILE')
    return None


def metric_cfgs(args) -> Dict[str, List[dict]]:
    """Metric configs in two groups: distances on images resized to the FID size, and
    the rest on the generated images as they are."""
    ref = reference_cfg(args, args.fid_size)
    ref_arg = dict(num_workers=args.workers, **(dict(reference=ref) if ref else {}))
    resized, native = [], []
    if 'fid' in args.metrics:
        resized.append(dict(type='ProxyFID', extractor=dict(
            type='InceptionFeatures', weights_path=args.inception_weights),
            reference_stats=args.reference_stats, **ref_arg))
    if 'proxy_fid' in args.metrics:
        resized.append(dict(type='ProxyFID', **ref_arg))
    if 'proxy_kid' in args.metrics:
        resized.append(dict(type='ProxyKID', subset_size=min(1000, args.num_prompts), **ref_arg))
    if 'attribute_accuracy' in args.metrics:
        native.append(dict(type='AttributeAccuracy'))
    if 'alignment' in args.metrics:
        native.append(dict(type='AlignmentScore'))
    if 'clip' in args.metrics:
        native.append(dict(type='CLIPScore', model_name=args.clip_model,
                           weights=args.clip_weights, pretrained_tag=args.clip_pretrained))
    if 'cmmd' in args.metrics:
        cmmd_ref = reference_cfg(args, None if args.reference is None else 336)
        native.append(dict(type='CMMD', weights=args.cmmd_weights, num_workers=args.workers,
                           **(dict(reference=cmmd_ref) if cmmd_ref else {})))
    return dict(resized=resized, native=native)


def start_ranks(args) -> Tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without a launcher; under torchrun
    the process group is joined, NCCL with one GPU per rank (``LOCAL_RANK``) or gloo
    on CPU (mmengine's ``init_dist`` sets a CUDA device)."""
    if args.launcher == 'none':
        return 0, 1
    if 'RANK' not in os.environ:
        raise InputError('--launcher pytorch needs the environment torchrun sets (RANK, '
                         'WORLD_SIZE, MASTER_ADDR, ...): start the ranks with '
                         'tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS')
    if torch.device(args.device).type == 'cuda':
        init_dist('pytorch', backend='nccl')
    else:
        torch.distributed.init_process_group(backend='gloo')
    return get_dist_info()


def finish_ranks() -> None:
    """Wait until every rank has written its images, then leave the process group:
    rank 0 scores alone (mmengine's metrics would otherwise gather over the ranks)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def generate_missing(store: ImageStore, generate: TextToImage, prompts, seeds, steps: int,
                     args, label: str, rank: int = 0, world_size: int = 1) -> None:
    """Generate the prompts of this rank's shard whose images the store lacks, batch by
    batch (the bar shows rank 0's shard)."""
    todo = store.missing(len(prompts), rank, world_size)
    share = len(range(rank, len(prompts), world_size))
    if len(todo) < share and rank == 0:
        shard = ' of rank 0' if world_size > 1 else ''
        print(f'{label}: {share - len(todo)} of {share} images{shard} already there')
    for start in tqdm(range(0, len(todo), args.batch_size), desc=f'{label} generation',
                      disable=not todo or rank != 0):
        part = todo[start:start + args.batch_size]
        with autocast(args):
            images = generate([prompts[i]['caption'] for i in part], [seeds[i] for i in part],
                              steps, args.guidance, args.scheduler, batch_size=len(part),
                              progress=False)
        store.save(part, images)


def autocast(args):
    """Half precision on CUDA (the paper times fp16); full precision on CPU."""
    return torch.autocast('cuda', dtype=torch.float16, enabled=args.device.startswith('cuda'))


def fid_view(images: torch.Tensor, args) -> torch.Tensor:
    """Images as the FID protocol sees them: resized to ``--fid-size``; clean-fid's
    legacy mode also rounds the resized images to 8 bit, as it feeds uint8 arrays."""
    if not args.fid_size:
        return images
    resized = resize_square(images, args.fid_size)
    return from_uint8(to_uint8(resized)) if args.fid_mode == 'clean-fid-legacy-pytorch' else resized


def build_evaluators(args) -> Dict[str, Evaluator]:
    """The requested image metrics, built before any image is generated, so a missing
    weights file or reference stops the run at once. ``evaluate`` resets them for reuse."""
    return {group: Evaluator([METRICS.build(dict(c, device=args.device)) for c in cfgs])
            for group, cfgs in metric_cfgs(args).items() if cfgs}


def score(store: ImageStore, prompts: List[dict], evaluators: Dict[str, Evaluator], args,
          dense_store: Optional[ImageStore]) -> Tuple[Dict[str, float], pd.DataFrame]:
    """Every requested image metric over the stored images, streamed in batches; the
    scores with their intervals, and the per-image scores (one row per prompt)."""
    fidelity: Dict[str, List[np.ndarray]] = {'ssim': [], 'psnr': []}
    for start in tqdm(range(0, len(prompts), 100), desc='scoring'):
        indices = list(range(start, min(start + 100, len(prompts))))
        images = store.load(indices)
        views = dict(native=images, resized=fid_view(images, args))
        for group, evaluator in evaluators.items():
            evaluator.process(data_samples=[
                dict(image=views[group][k], caption=prompts[i]['caption'],
                     attributes=prompts[i].get('attributes')) for k, i in enumerate(indices)])
        if dense_store is not None:
            dense = dense_store.load(indices)
            fidelity['ssim'].append(ssim(images, dense).numpy())
            fidelity['psnr'].append(psnr(images, dense).numpy())
    scores = {}
    per_image = pd.DataFrame({'prompt': range(len(prompts))})
    for evaluator in evaluators.values():
        scores.update(evaluator.evaluate(len(prompts)))
        for metric in evaluator.metrics:
            for key, values in getattr(metric, 'per_image', {}).items():
                per_image[key] = values
    for name, values in fidelity.items():
        if values and name in args.metrics:
            values = np.concatenate(values)
            stats = summary(values)
            scores.update({f'{name}_vs_dense': stats['mean'],
                           f'{name}_vs_dense_ci_low': stats['ci_low'],
                           f'{name}_vs_dense_ci_high': stats['ci_high']})
            per_image[f'{name}_vs_dense'] = values
    return scores, per_image


def digest(obj) -> str:
    """A short hash of ``obj`` as sorted JSON."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def image_key(model_cfg: dict, unet, experts: Optional[ExpertSet], prompts: List[dict], args,
              resolution: int, steps: int) -> dict:
    """What makes a store's images: the model config (noise schedule, encoders), the UNet's
    weights, the experts, the prompt texts and the sampler settings."""
    return dict(model=digest(model_cfg), weights=weights_fingerprint(unet)['float32'],
                experts=digest([experts.masks, experts.route]) if experts else None,
                prompts=digest([p['caption'] for p in prompts]), seed=args.seed,
                scheduler=args.scheduler, guidance=args.guidance, resolution=resolution,
                steps=steps)


def dense_store_dir(args, key: dict) -> Path:
    """The shared dense store of the images ``key`` describes:
    ``--dense-store/dense-<steps>-<hash of key>``."""
    return Path(args.dense_store) / f'dense-{args.dense_steps}-{digest(key)}'


def check_architecture(unet, model: LatentDiffusion, args) -> None:
    """Refuse a checkpoint whose UNet is not the config's architecture (it would fail
    mid-sampling against the config's text encoder and latents)."""
    differ = architecture_difference(unet, model.unet)
    if differ:
        raise InputError(f'the UNet of {args.checkpoint} is another architecture than '
                         f'model.unet of {args.config} (they differ in {", ".join(differ)}); '
                         'pass the config the checkpoint was trained with')


def mac_tables(unet, space: str, model: LatentDiffusion, resolution: int) -> Dict[str, MacTable]:
    """Per-unit MACs of ``space``'s units of ``unet`` at ``resolution``, per convention."""
    units = PRUNING_SPACES.build(dict(type=space)).find(unet)
    return {c: mac_table(unet, units, space, resolution, model.latent_scale,
                         model.context_length, c) for c in CONVENTIONS}


def macs(costs: Dict[str, MacTable], experts: Optional[ExpertSet], model: LatentDiffusion,
         args, steps: int) -> Dict[str, float]:
    """GMACs per generation and per UNet call (both conventions)."""
    row = generation_gmacs(costs, steps, args.scheduler, model.scheduler.config, experts)
    calls = 2 * steps if args.guidance != 1 else steps
    row.update({k.replace('per_generation', 'per_unet_call'): v / calls for k, v in row.items()})
    row['dense_gmacs_per_unet_call'] = costs['fvcore'].total_macs / 1e9
    return row


def latency(generate: TextToImage, dense: TextToImage, prompts, seeds, args) -> Dict[str, float]:
    """Median seconds of one generation (the first prompt), model and dense interleaved."""
    def run(pipe, steps):
        def call():
            with autocast(args):
                pipe([prompts[0]['caption']], seeds[:1], steps, args.guidance, args.scheduler,
                     batch_size=1, progress=False)
        return call

    device = torch.device(args.device)
    seconds = interleaved({'model': run(generate, args.steps), 'dense': run(dense, args.dense_steps)},
                          args.latency_repeats, device_sync(device), args.latency_warmup)
    return dict(latency_seconds=seconds['model'], dense_latency_seconds=seconds['dense'],
                latency_speedup_vs_dense=seconds['dense'] / seconds['model'],
                latency_device=device_name(device))


def file_record(path: Optional[str]) -> Optional[dict]:
    """Path, size and modification time of a weights file, for the manifest."""
    if not path:
        return None
    p = Path(path).expanduser()
    return dict(path=str(p), bytes=p.stat().st_size if p.is_file() else None)


def package_version(name: str) -> Optional[str]:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_results(work_dir: Path, rows: List[dict], per_image: pd.DataFrame,
                  manifest: dict) -> None:
    atomic_write_json(work_dir / 'results.json', dict(rows=rows, manifest=manifest))
    atomic_write(work_dir / 'results.csv',
                 lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False, float_format='%.6g'))
    atomic_write(work_dir / 'per_image.csv',
                 lambda tmp: per_image.to_csv(tmp, index=False, float_format='%.6g'))
    atomic_write_json(work_dir / 'manifest.json', manifest)


@torch.no_grad()
def main(argv=None) -> Optional[Dict]:
    """The results rows and manifest (None on ranks other than 0)."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    rank, world_size = start_ranks(args)
    device = torch.device(args.device)

    model = LatentDiffusion.from_config(cfg.model).eval().to(device)
    resolution = args.resolution or model.resolution
    latent_size = (resolution // model.latent_scale, ) * 2
    dense_checkpoint = args.checkpoint == 'dense'
    experts = None
    if dense_checkpoint:
        unet = model.unet
    else:
        unet = load_unet(args.checkpoint).eval().to(device)
        check_architecture(unet, model, args)
        if (Path(args.checkpoint) / 'experts.json').is_file():
            experts = load_experts(args.checkpoint)
    router = ExpertRouter(unet, experts) if experts else None
    pipe = TextToImage(unet, model.autoencoder, model.text_encoder, model.scheduler.config,
                       latent_size, router)
    dense = TextToImage(model.unet, model.autoencoder, model.text_encoder,
                        model.scheduler.config, latent_size)

    # Rank 0 scores. Its metrics are built first, and the other ranks wait for them, so a
    # missing weights file or reference stops the run before any image is generated.
    evaluators = build_evaluators(args) if rank == 0 else {}
    if world_size > 1:
        torch.distributed.barrier()
    prompts = prompt_set(args)
    seeds = [args.seed * 100_000 + i for i in range(len(prompts))]
    name = Path(args.checkpoint.rstrip('/')).name
    work_dir = Path(args.work_dir or Path('work_dirs') / 'test' / name)
    method = f'{args.label or name}-{args.steps}'
    settings = dict(config=args.config, checkpoint=args.checkpoint, prompts=args.prompts,
                    caption_column=args.caption_column, num_prompts=len(prompts), seed=args.seed,
                    scheduler=args.scheduler, guidance=args.guidance, resolution=resolution,
                    cfg_options=args.cfg_options)
    key = image_key(cfg.model.to_dict(), unet, experts, prompts, args, resolution, args.steps)
    store = ImageStore(work_dir / 'images' / method, key)
    generate_missing(store, pipe, prompts, seeds, args.steps, args, method, rank, world_size)

    needs_dense = experts is not None and (
        args.dense_baseline or set(args.metrics) & {'ssim', 'psnr'})
    dense_store = None
    if needs_dense:
        dense_method = f'dense-{args.dense_steps}'
        dense_key = image_key(cfg.model.to_dict(), model.unet, None, prompts, args, resolution,
                              args.dense_steps)
        dense_store = ImageStore(dense_store_dir(args, dense_key), dense_key)
        generate_missing(dense_store, dense, prompts, seeds, args.dense_steps, args, dense_method,
                         rank, world_size)
    finish_ranks()
    if rank != 0:
        return None

    scores, per_image = score(store, prompts, evaluators, args, dense_store)
    costs = mac_tables(unet, experts.space if experts else 'paper', model, resolution) \
        if experts or 'macs' in args.metrics else None
    rows = [dict(method=method, steps=args.steps,
                 num_experts=experts.num_experts if experts else None,
                 keep_ratio=experts.keep_ratios(costs)['fvcore'] if experts else 1.0, **scores)]
    if args.dense_baseline and dense_store is not None:
        rows.append(dict(method=f'dense-{args.dense_steps}', steps=args.dense_steps,
                         num_experts=None, keep_ratio=1.0,
                         **score(dense_store, prompts, evaluators, args, None)[0]))
    if 'macs' in args.metrics:
        for row in rows:
            routed = experts if row['method'] == method else None
            row.update(macs(costs, routed, model, args, row['steps']))
    if 'latency' in args.metrics:
        rows[0].update(latency(pipe, dense, prompts, seeds, args))

    manifest = dict(
        preset=args.preset, **settings, steps=args.steps, dense_steps=args.dense_steps,
        metrics=args.metrics, seeds=f'prompt i uses seed {args.seed} * 100000 + i',
        world_size=world_size,
        image_format='8-bit PNG, metrics read the saved files',
        device=device_name(device), precision='fp16 autocast' if device.type == 'cuda' else 'fp32',
        versions=dict(python=platform.python_version(),
                      **{p: package_version(p) for p in ('alter', 'torch', 'diffusers', 'mmengine',
                                                         'open_clip_torch')}),
        command=' '.join(sys.argv))
    if set(args.metrics) & {'fid', 'proxy_fid', 'proxy_kid'}:
        manifest['fid'] = dict(
            mode=args.fid_mode, reference_stats=args.reference_stats,
            resize=f'center square crop, antialiased bicubic to {args.fid_size} px'
            if args.fid_size else 'none',
            reference=args.reference or ('Shapes-T2I val renders' if args.prompts == 'shapes'
                                         else None),
            inception_weights=file_record(args.inception_weights))
    if 'clip' in args.metrics:
        manifest['clip'] = dict(model=args.clip_model, pretrained=args.clip_pretrained,
                                weights=file_record(args.clip_weights),
                                score='100 * cos, mean over images')
    if 'cmmd' in args.metrics:
        manifest['cmmd'] = dict(model='ViT-L-14-336', pretrained='openai', sigma=10, scale=1000,
                                weights=file_record(args.cmmd_weights))
    write_results(work_dir, rows, per_image, manifest)
    for row in rows:
        print('  '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                        for k, v in row.items() if '/' not in k))
    print(f'wrote {work_dir / "results.json"}, results.csv, per_image.csv and manifest.json')
    return dict(rows=rows, manifest=manifest)


if __name__ == '__main__':
    run_tool(main)
