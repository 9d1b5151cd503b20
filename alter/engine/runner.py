"""mmengine's Runner, saving checkpoints of sharded (FSDP) models from every rank and
stopping at a non-finite loss."""
import inspect

from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from torch.distributed.tensor import DTensor


@RUNNERS.register_module()
class ShardAwareRunner(Runner):
    """``Runner`` whose checkpoints gather sharded model and optimiser state.

    ``Runner.save_checkpoint`` runs on rank 0 alone, but gathering the full
    tensors of a sharded model is a collective: the other ranks take part in
    the same order (model, optimisers, ``before_save_checkpoint`` hooks) and
    write nothing. Unsharded models are saved exactly as mmengine does.

    Every run also gets ``FiniteLossHook``: training stops at the first
    iteration with a non-finite loss term, before anything of it is saved.
    """

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        self.register_hook(dict(type='FiniteLossHook'))

    def save_checkpoint(self, *args, **kwargs) -> None:
        sharded = any(isinstance(p, DTensor) for p in self.model.parameters())
        if is_main_process() or not sharded:
            return super().save_checkpoint(*args, **kwargs)
        options = inspect.signature(Runner.save_checkpoint).bind(self, *args, **kwargs).arguments
        self.model.module.state_dict()
        if options.get('save_optimizer', True):
            self.optim_wrapper.state_dict()
        self.call_hook('before_save_checkpoint', checkpoint={})
        return None
