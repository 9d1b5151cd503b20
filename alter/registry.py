"""Registries of `alter`.

Children of mmengine's root registries (scope ``alter``) hold the parts the
Runner builds; standalone registries hold ALTER's own axes of variation.
mmengine allows one child per parent and scope, hence one registry per axis.

Every registry here raises on an unknown ``type=`` with the list of names it
knows, instead of mmengine's generic "is not in the registry".
"""
from typing import Optional, Type

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry


class AlterRegistry(Registry):
    """A registry whose failed look-ups list what is registered."""

    def get(self, key: str) -> Optional[Type]:
        self._import_lineage()
        obj = super().get(key)
        if obj is None:
            raise KeyError(
                f"unknown {self.name} type {key!r}; registered {self.name} "
                f"types: {', '.join(self.known_names())}")
        return obj

    def known_names(self) -> list:
        """Names resolvable from this registry: its own and its ancestors'."""
        self._import_lineage()
        names, node = set(), self
        while node is not None:
            names.update(node.module_dict)
            node = node.parent
        return sorted(names)

    def _import_lineage(self) -> None:
        """Import the modules registering into this registry and its ancestors."""
        node = self
        while node is not None:
            node.import_from_location()
            node = node.parent


def _child(name: str, parent: Registry) -> AlterRegistry:
    return AlterRegistry(name, parent=parent, scope='alter', locations=['alter'])


MODELS = _child('model', MMENGINE_MODELS)
DATASETS = _child('dataset', MMENGINE_DATASETS)
DATA_SAMPLERS = _child('data sampler', MMENGINE_DATA_SAMPLERS)
FUNCTIONS = _child('function', MMENGINE_FUNCTIONS)  # e.g. collate functions: type='alter.<name>'
TRANSFORMS = _child('transform', MMENGINE_TRANSFORMS)
METRICS = _child('metric', MMENGINE_METRICS)
HOOKS = _child('hook', MMENGINE_HOOKS)
LOOPS = _child('loop', MMENGINE_LOOPS)
OPTIMIZERS = _child('optimizer', MMENGINE_OPTIMIZERS)
OPTIM_WRAPPERS = _child('optimizer wrapper', MMENGINE_OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child('parameter scheduler', MMENGINE_PARAM_SCHEDULERS)
# Logging: mmengine's Visualizer and its backends (local scalars.json, TensorBoard, W&B) are
# found through the parents; the children let the Runner resolve them in scope 'alter'.
VISUALIZERS = _child('visualizer', MMENGINE_VISUALIZERS)
VISBACKENDS = _child('visualization backend', MMENGINE_VISBACKENDS)

# ALTER's own axes (standalone: no mmengine parent).
PRUNING_SPACES = AlterRegistry('pruning space', scope='alter', locations=['alter'])
ROUTERS = AlterRegistry('router', scope='alter', locations=['alter'])
EXPERT_GENERATORS = AlterRegistry('expert generator', scope='alter', locations=['alter'])
REGULARIZERS = AlterRegistry('regularizer', scope='alter', locations=['alter'])
# Where the sparsity budget's per-unit costs come from (MACs or a measured latency table).
COST_MODELS = AlterRegistry('cost model', scope='alter', locations=['alter'])
# How the UNet update runs a batch of samples with different experts (blended or grouped).
UNET_STEPS = AlterRegistry('unet step', scope='alter', locations=['alter'])
# One adapter per family of diffusers denoisers, registered under the diffusers class name.
BACKBONES = AlterRegistry('backbone', scope='alter', locations=['alter'])
OBJECTIVES = AlterRegistry('objective', scope='alter', locations=['alter'])
# How a routing table's rows map to the timestep values a denoiser receives.
TIMESTEP_GRIDS = AlterRegistry('timestep grid', scope='alter', locations=['alter'])
