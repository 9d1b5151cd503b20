"""One optimiser wrapper per trained sub-module (UNet, hypernetwork)."""
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict
from torch import nn
from torch.distributed.tensor import DTensor

from alter.engine.parallel import gather_sharded_optimizer_state
from alter.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS

try:  # optional: 8-bit AdamW (bitsandbytes, CUDA) as optimizer type 'AdamW8bit'
    from bitsandbytes.optim import AdamW8bit
    OPTIMIZERS.register_module('AdamW8bit', module=AdamW8bit)
except ImportError:
    pass


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SubmoduleOptimWrapperConstructor:
    """Builds an ``OptimWrapperDict`` with one wrapper per named child module.

    Config: ``optim_wrapper = dict(constructor='SubmoduleOptimWrapperConstructor',
    unet=dict(optimizer=...), hypernet=dict(optimizer=...))``; each entry is an
    ordinary mmengine optim-wrapper config (type, optimizer, paramwise_cfg,
    clip_grad) applied to ``model.<name>``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None) -> None:
        if paramwise_cfg is not None:
            raise ValueError('give paramwise_cfg inside each sub-module entry of optim_wrapper')
        self.cfgs = dict(optim_wrapper_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        model = getattr(model, 'module', model)  # unwrap DDP-style wrappers
        wrappers = {}
        for name, cfg in self.cfgs.items():
            if not isinstance(getattr(model, name, None), nn.Module):
                raise KeyError(f'optim_wrapper entry {name!r} names no sub-module of '
                               f'{type(model).__name__}')
            cfg = dict(cfg)
            wrappers[name] = DefaultOptimWrapperConstructor(
                cfg, cfg.pop('paramwise_cfg', None))(getattr(model, name))
            if any(isinstance(p, DTensor) for p in getattr(model, name).parameters()):
                gather_sharded_optimizer_state(wrappers[name].optimizer)  # FSDP: full-state checkpoints
        return OptimWrapperDict(**wrappers)
