"""MAC accounting of a denoiser (UNet or transformer) and its units.

Two named conventions (ALTER_SPEC §3):

* ``fvcore``          -- fvcore's count; scaled-dot-product attention is not
  counted (the paper's convention: SD2.1 at 768 px = 761.4 G per UNet call);
* ``with_attention``  -- ``fvcore`` plus the attention matmuls Q.K^T and A.V,
  ``B * Lq * Lk * (inner_q + inner_v)`` MACs per attention (SD2.1 768 px ~1075 G).

A unit's MACs are the MACs saved by skipping it (its module minus its bypass:
the ``conv_shortcut`` for ``shortcut`` units). Everything else -- conv_in/out,
time embedding, samplers, non-prunable resnets, the norm/proj around
transformer blocks in the ``paper`` space -- is non-prunable and always kept.

Per-module counts are cached on disk per (architecture, latent size, context
length, convention), because counting SD2.1 at 768 px takes tens of seconds.
"""
import hashlib
import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention
from torch import nn

from alter.units.backbones import Backbone, backbone_of
from alter.units.unit import Unit
from alter.utils.io import atomic_write_json, cache_path

CONVENTIONS = ('fvcore', 'with_attention')


def kept_fraction(masks: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Kept fraction ``1 - sum_i c_i (1 - m_i)`` of a model call whose unit i costs
    the fraction ``c_i`` of the call (the budget S(m) of any cost table).

    Args:
        masks: (..., N_L) gates in [0, 1]; differentiable.
        fractions: (N_L,) costs as fractions of the whole call.
    Returns:
        (...) keep ratio in [1 - sum_i c_i, 1].
    """
    if masks.shape[-1] != len(fractions):
        raise ValueError(f'expected masks with {len(fractions)} units in the last '
                         f'dimension, got shape {tuple(masks.shape)}')
    frac = fractions.to(masks.device, masks.dtype)
    return 1.0 - ((1.0 - masks) * frac).sum(-1)


@dataclass
class MacTable:
    """Per-unit and total MACs of one backbone at one input size (batch 1).

    ``unit_macs[i]`` belongs to ``unit_names[i]``; ``total_macs`` is the whole
    model call, so ``total_macs - prunable_macs`` is always kept.
    """

    convention: str
    resolution: int  # pixels
    latent_size: Tuple[int, int]
    context_length: int
    space: str
    total_macs: int
    unit_names: List[str]
    unit_kinds: List[str]
    unit_macs: List[int]

    @property
    def name(self) -> str:
        """Key of this table's keep ratio in logs and expert files: its convention."""
        return self.convention

    @property
    def prunable_macs(self) -> int:
        return sum(self.unit_macs)

    @property
    def min_keep_ratio(self) -> float:
        """Keep ratio with every unit skipped: the non-prunable share."""
        return 1.0 - self.prunable_macs / self.total_macs

    def unit_fractions(self) -> torch.Tensor:
        """(N_L,) float64: each unit's MACs as a fraction of the whole model."""
        return torch.tensor(self.unit_macs, dtype=torch.float64) / self.total_macs

    def keep_ratio(self, masks: torch.Tensor) -> torch.Tensor:
        """MAC-weighted kept fraction S(m) of the whole model.

        Args:
            masks: (..., N_L) gates in [0, 1]; differentiable.
        Returns:
            (...) keep ratio in [min_keep_ratio, 1].
        """
        return kept_fraction(masks, self.unit_fractions())

    def summary(self, model_name: str) -> List[str]:
        """Lines saying what the budget can reach: units, MACs per call, prunable share."""
        scale, prefix = self.display_unit()
        kinds = ', '.join(f'{n} {kind}' for kind, n in Counter(self.unit_kinds).items())
        return [
            f'space {self.space!r}: {len(self.unit_names)} units ({kinds}) of a {model_name}; '
            f'convention {self.convention!r}; {self.resolution} px -> latent '
            f'{self.latent_size[0]}x{self.latent_size[1]}, context {self.context_length} tokens',
            f'total     {self.total_macs / scale:10.2f} {prefix} MACs per model call (batch 1)',
            f'prunable  {self.prunable_macs / scale:10.2f} {prefix} '
            f'({100 * (1 - self.min_keep_ratio):.1f} %)',
            f'always kept {(self.total_macs - self.prunable_macs) / scale:8.2f} {prefix} (lowest '
            f'reachable keep ratio {self.min_keep_ratio:.3f}, largest reachable sparsity '
            f'{1 - self.min_keep_ratio:.3f})']

    def display_unit(self) -> Tuple[float, str]:
        """(divisor, prefix) to print this model's MACs with: G, or M below 1 G (toy models)."""
        return (1e9, 'G') if self.total_macs >= 1e9 else (1e6, 'M')

    def to_dict(self) -> dict:
        """JSON layout ``{convention, resolution, total_macs, prunable_macs, units: [...]}``."""
        d = asdict(self)
        units = [dict(name=n, kind=k, macs=m)
                 for n, k, m in zip(d.pop('unit_names'), d.pop('unit_kinds'), d.pop('unit_macs'))]
        return dict(d, prunable_macs=self.prunable_macs, units=units)


def _architecture(model: nn.Module) -> dict:
    return {k: v for k, v in dict(model.config).items() if not k.startswith('_')}


def architecture_key(model: nn.Module) -> str:
    """Stable hash of a model's architecture (its config without private keys)."""
    config = _architecture(model)
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def architecture_difference(a: nn.Module, b: nn.Module) -> List[str]:
    """The config keys in which two models' architectures differ, as ``key: a vs b``."""
    config_a, config_b = _architecture(a), _architecture(b)
    return [f'{k}: {config_a.get(k)} vs {config_b.get(k)}'
            for k in sorted(set(config_a) | set(config_b))
            if json.dumps(config_a.get(k), default=str) != json.dumps(config_b.get(k), default=str)]


class _Call(nn.Module):
    """One call of the model returning a plain tensor, as fvcore's tracer needs: the
    conditioning arrives as positional tensors named by ``keys``."""

    def __init__(self, model: nn.Module, backbone: Backbone, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.backbone, self.keys = model, backbone, tuple(keys)

    def forward(self, sample, timestep, *context):
        return self.backbone.predict(self.model, sample, timestep, dict(zip(self.keys, context)))


def _attention_macs(model: nn.Module) -> Tuple[Dict[str, int], list]:
    """Hooks recording the matmul MACs of every diffusers attention module by path.

    Cross-attention: B * Lq * Lk * (inner_q + inner_v) with Lk the context's
    tokens; joint attention (SD3, Flux double-stream blocks: ``added_kv_proj_dim``
    set) attends over the image and text tokens together, Lq = Lk = L_img + L_txt.
    """
    record: Dict[str, int] = {}

    def hook(path):
        def pre_hook(module, args, kwargs):
            x = args[0] if args else kwargs['hidden_states']
            ctx = kwargs.get('encoder_hidden_states', args[1] if len(args) > 1 else None)
            lq = x.shape[1] if x.dim() == 3 else x.shape[2] * x.shape[3]
            lk = lq if ctx is None else ctx.shape[1]
            if ctx is not None and getattr(module, 'added_kv_proj_dim', None) is not None:
                lq = lk = lq + ctx.shape[1]
            inner = module.to_q.out_features + module.to_v.out_features
            record[path] = int(x.shape[0] * lq * lk * inner)  # shapes are tensors when traced
        return pre_hook

    handles = [m.register_forward_pre_hook(hook(p), with_kwargs=True)
               for p, m in model.named_modules()
               if isinstance(m, (Attention, AttentionModuleMixin))]
    return record, handles


def count_module_macs(model: nn.Module, latent_size: Tuple[int, int],
                      context_length: int) -> Dict[str, Dict[str, int]]:
    """MACs of every module (path -> MACs; '' = whole model) under each convention.

    One traced forward at batch 1 on the model's device counts both conventions;
    the conditioning is the backbone adapter's example (``context_length`` text
    tokens where the model reads text).
    """
    backbone = backbone_of(model, 'MAC counting')
    p = next(model.parameters())
    # A private generator: whether the count comes from the cache must not
    # change the global random stream (model initialisation follows).
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, backbone.latent_channels(model), *latent_size, generator=g)
    context = backbone.example_context(model, context_length, g)
    sample = sample.to(p.device, p.dtype)
    context = {k: v.to(p.device, p.dtype) if v.is_floating_point() else v.to(p.device)
               for k, v in context.items()}
    timestep = torch.tensor([500], device=p.device)
    attention, handles = _attention_macs(model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # fvcore's tracer: jit deprecation notes
            from fvcore.nn import FlopCountAnalysis  # heavy import, only when counting
            call = _Call(model, backbone, list(context)).eval()
            analysis = FlopCountAnalysis(call, (sample, timestep, *context.values()))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_module = analysis.by_module()
    finally:
        for h in handles:
            h.remove()
    fv = {k[len('model.'):] if k.startswith('model.') else ('' if k in ('', 'model') else k):
          int(v) for k, v in by_module.items()}
    with_attn = dict(fv)
    for path, macs in attention.items():
        parts = path.split('.')
        for i in range(len(parts) + 1):
            prefix = '.'.join(parts[:i])
            with_attn[prefix] = with_attn.get(prefix, 0) + macs
    return dict(fvcore=fv, with_attention=with_attn)


def cached_module_macs(model: nn.Module, latent_size: Tuple[int, int],
                       context_length: int, convention: str,
                       cache_dir: Optional[Path] = None) -> Dict[str, int]:
    """``count_module_macs`` for one convention, read from / written to the cache."""
    if convention not in CONVENTIONS:
        raise ValueError(f'unknown MAC convention {convention!r}; expected one of {CONVENTIONS}')
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_path('macs')
    stem = f'{architecture_key(model)}_{latent_size[0]}x{latent_size[1]}_ctx{context_length}'
    path = cache_dir / f'{stem}_{convention}.json'
    if path.exists():
        return json.loads(path.read_text())
    counts = count_module_macs(model, latent_size, context_length)
    for name, table in counts.items():
        atomic_write_json(cache_dir / f'{stem}_{name}.json', table)
    return counts[convention]


def unit_macs(units: Sequence[Unit], module_macs: Dict[str, int]) -> List[int]:
    """MACs saved by skipping each unit (its bypass's own MACs subtracted)."""
    saved = []
    for unit in units:
        macs = module_macs.get(unit.path, 0)
        if unit.bypass == 'shortcut':
            macs -= module_macs.get(f'{unit.path}.conv_shortcut', 0)
        saved.append(macs)
    return saved


def mac_table(model: nn.Module, units: Sequence[Unit], space: str, resolution: int,
              latent_scale: int, context_length: int, convention: str = 'fvcore',
              cache_dir: Optional[Path] = None) -> MacTable:
    """Per-unit MACs of ``units`` at ``resolution`` pixels (latent = resolution / latent_scale)."""
    if resolution % latent_scale:
        raise ValueError(f'resolution {resolution} px is not a multiple of the autoencoder '
                         f'scale factor {latent_scale}')
    latent = (resolution // latent_scale, ) * 2
    modules = cached_module_macs(model, latent, context_length, convention, cache_dir)
    return MacTable(convention=convention, resolution=resolution, latent_size=latent,
                    context_length=context_length, space=space, total_macs=modules[''],
                    unit_names=[u.name for u in units], unit_kinds=[u.kind for u in units],
                    unit_macs=unit_macs(units, modules))
