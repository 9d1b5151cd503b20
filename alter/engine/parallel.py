"""Data parallelism per sub-module: DDP, or FSDP2 sharding for memory-bound runs.

ALTER's ``train_step`` updates the UNet and the hypernetwork in turn, so one
DDP over the whole model cannot work: each backward reaches only one of them.
``SubmoduleParallel`` wraps every trained child on its own (as mmengine's
``MMSeparateDistributedDataParallel`` does) and can instead shard named
children, the UNet and its frozen teacher, with torch's FSDP2 ``fully_shard``:
their parameters, gradients and optimiser state are split over the ranks, and
each resnet and transformer is gathered only while it runs.

mmengine's own ``FSDPStrategy`` (``FlexibleRunner``) wraps the whole model in
FSDP1 and runs the generic forward-loss-update step, which cannot express the
two alternating updates; the Runner's ``model_wrapper_cfg`` is the place where
mmengine lets a model choose its own parallel wrapper.

Checkpoints stay ordinary files: keys carry no wrapper prefix, and sharded
tensors (model and optimiser state) are gathered to full ones when saved and
split again when loaded, so a checkpoint resumes under any number of ranks or
either strategy, and ``tools/export.py`` reads it as is.
"""
from functools import partial
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.device import get_device
from mmengine.model import MMDistributedDataParallel
# The Runner looks wrappers up in mmengine's root registry without a scope.
from mmengine.registry import MODEL_WRAPPERS
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from alter.units.backbones import backbone_of


def full_tensors(tensors: Dict[str, object]) -> Dict[str, object]:
    """The values with every sharded one (DTensor) gathered to a full CPU tensor.

    A collective for sharded values: every rank must call it with the same keys.
    """
    return {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v for k, v in tensors.items()}


def distribute_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full ``value`` split as the sharded ``like`` is; other values unchanged.

    Every rank holds the full value (all read the same checkpoint), so each
    keeps its own shard without communication.
    """
    if not isinstance(like, DTensor) or isinstance(value, DTensor) or value.shape != like.shape:
        return value
    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements,
                             src_data_rank=None)


def sharded_modules(unet: nn.Module) -> List[nn.Module]:
    """The modules FSDP2 shards, innermost first, then the model itself (its remaining
    layers): on UNets each resnet and transformer, then each block; on diffusion
    transformers each transformer block (``Backbone.shard_modules``)."""
    return backbone_of(unet, 'FSDP sharding').shard_modules(unet) + [unet]


def shard_unet(unet: nn.Module, **fsdp_kwargs) -> None:
    """Shard ``unet`` in place with FSDP2 (``fully_shard`` arguments)."""
    for module in sharded_modules(unet):
        fully_shard(module, **fsdp_kwargs)


def gather_sharded_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Make ``optimizer.state_dict()`` hold full tensors and loading re-shard them."""
    optimizer.register_state_dict_post_hook(_full_optimizer_state)
    optimizer.register_load_state_dict_pre_hook(_split_optimizer_state)


def _full_optimizer_state(optimizer, state_dict: dict) -> None:
    # New dicts: the per-parameter ones of state_dict() are the optimiser's live state.
    for index, state in state_dict['state'].items():
        state_dict['state'][index] = full_tensors(state)


def _split_optimizer_state(optimizer, state_dict: dict) -> dict:
    # Saved state is keyed by parameter index in group order, as torch pairs them.
    params = [p for group in optimizer.param_groups for p in group['params']]
    saved = [i for group in state_dict['param_groups'] for i in group['params']]
    state = dict(state_dict['state'])
    for index, param in zip(saved, params):
        if index in state:
            state[index] = {k: distribute_like(v, param) if torch.is_tensor(v) else v
                            for k, v in state[index].items()}
    return dict(state_dict, state=state)


def _plain_state_dict(data_parallel: Sequence[str], module, state_dict, prefix,
                      local_metadata) -> None:
    """Keys as the unwrapped model's, sharded values gathered (on every rank)."""

    def plain(key: str) -> str:
        name, _, rest = key[len(prefix):].partition('.')
        if name in data_parallel and rest.startswith('module.'):
            return f'{prefix}{name}.{rest[len("module."):]}'
        return key

    items = list(full_tensors(state_dict).items())
    state_dict.clear()
    state_dict.update((plain(k), v) for k, v in items)


def _shard_loaded_state(module, state_dict, prefix, *args) -> None:
    """Full tensors of a checkpoint split as the sharded parameters they load into."""
    for name, param in module.named_parameters():
        key = prefix + name
        if isinstance(param, DTensor) and key in state_dict:
            state_dict[key] = distribute_like(state_dict[key], param)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"model_wrapper_cfg.mixed_precision takes torch dtype names such as "
                         f"'bfloat16' or 'float32', got {name!r}")
    return dtype


@MODEL_WRAPPERS.register_module()
class SubmoduleParallel(nn.Module):
    """DDP for every trained child of the model, or FSDP2 for the children in ``shard``.

    Args:
        module: the model (``LatentDiffusion`` or ``ALTER``); its children are
            replaced in place by their wrapped or sharded versions.
        shard: names of UNet children to shard with FSDP2 (e.g. ``('unet',
            'teacher')``); frozen ones shard their weights only. Empty: plain DDP.
        mixed_precision: FSDP2 ``MixedPrecisionPolicy`` of the trained sharded
            children, dtypes by name, e.g. ``dict(param_dtype='bfloat16',
            reduce_dtype='float32')``.
        reshard_after_forward: free gathered layers after forward (saves memory,
            gathers again in backward).
        **ddp_kwargs: ``MMDistributedDataParallel`` arguments of the other trained
            children (default: ``broadcast_buffers=False``).

    Children the model lists in ``data_dependent_children`` (ALTER's UNet under
    the grouped UNet step) run different units on different ranks: under DDP
    they get ``find_unused_parameters=True``, and they cannot be sharded, since
    FSDP gathers and reduces each unit's parameters collectively, in the same
    order on every rank.
    """

    def __init__(self,
                 module: nn.Module,
                 shard: Sequence[str] = (),
                 mixed_precision: Optional[Dict[str, str]] = None,
                 reshard_after_forward: bool = True,
                 **ddp_kwargs) -> None:
        super().__init__()
        children = dict(module.named_children())
        unknown = [name for name in shard if name not in children]
        if unknown:
            raise KeyError(f'model_wrapper_cfg.shard names {unknown}, which are not sub-modules '
                           f'of {type(module).__name__}; its sub-modules: {sorted(children)}')
        dependent = getattr(module, 'data_dependent_children', ())
        refused = [name for name in shard if name in dependent]
        if refused:
            raise ValueError(f'cannot shard {refused} with FSDP: under the grouped UNet step each '
                             'rank runs only the units of the experts in its own samples, and '
                             "FSDP needs every rank to run the same ones; set "
                             "model.unet_step=dict(type='selected') (the default) to shard "
                             'the UNet')
        self.module = module
        device = torch.device(get_device())
        ddp_kwargs.setdefault('broadcast_buffers', False)
        if device.type == 'cuda':
            ddp_kwargs.setdefault('device_ids', [torch.cuda.current_device()])
        policy = MixedPrecisionPolicy(**{k: _dtype(v) for k, v in (mixed_precision or {}).items()})
        self.data_parallel = []  # children under DDP: their keys lose the 'module.' level
        for name, child in children.items():
            child.to(device)
            trained = any(p.requires_grad for p in child.parameters())
            if name in shard:
                # A frozen child keeps its own dtype (e.g. the half-precision teacher).
                shard_unet(child, reshard_after_forward=reshard_after_forward,
                           mp_policy=policy if trained else MixedPrecisionPolicy())
            elif trained:
                kwargs = dict(ddp_kwargs, find_unused_parameters=True) if name in dependent \
                    else ddp_kwargs
                setattr(module, name, MMDistributedDataParallel(module=child, **kwargs))
                self.data_parallel.append(name)
        # torch marks hooks with an attribute, which bound methods cannot take: partial.
        module.register_state_dict_post_hook(partial(_plain_state_dict, self.data_parallel))
        module.register_load_state_dict_pre_hook(_shard_loaded_state)

    def train_step(self, data: dict, optim_wrapper) -> Dict[str, torch.Tensor]:
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data: dict) -> list:
        return self.module.val_step(data)

    def test_step(self, data: dict) -> list:
        return self.module.test_step(data)

