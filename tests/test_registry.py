import mmengine.model  # noqa: F401  (registers mmengine's models in its root registry)
import pytest
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope

from alter.registry import (BACKBONES, COST_MODELS, MODELS, OBJECTIVES, PRUNING_SPACES,
                            REGULARIZERS, ROUTERS, TIMESTEP_GRIDS, UNET_STEPS)
from alter.units.spaces import PaperSpace


def test_unknown_type_lists_registered_names():
    with pytest.raises(KeyError) as err:
        PRUNING_SPACES.build(dict(type='papr'))
    message = str(err.value)
    assert "'papr'" in message
    for name in ('paper', 'block', 'shortcut'):
        assert name in message


def test_children_of_mmengine_roots_resolve_parents():
    assert MODELS.parent is MMENGINE_MODELS and MODELS.scope == 'alter'
    # mmengine's own models are reachable through the child.
    assert MODELS.get('BaseDataPreprocessor') is not None
    with pytest.raises(KeyError, match='DiffusersUNet'):
        MODELS.get('NoSuchModel')


def test_root_registry_builds_alter_types_in_default_scope():
    with DefaultScope.overwrite_default_scope('alter'):
        space = MMENGINE_MODELS.switch_scope_and_registry('alter').__enter__()
        assert space is MODELS
    assert isinstance(PRUNING_SPACES.build(dict(type='paper')), PaperSpace)


def test_standalone_registries_have_no_parent():
    for registry in (PRUNING_SPACES, ROUTERS, REGULARIZERS, BACKBONES, OBJECTIVES, TIMESTEP_GRIDS,
                     UNET_STEPS, COST_MODELS):
        assert registry.parent is None
