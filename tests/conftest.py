"""Shared fixtures: offline, single-threaded, tiny real diffusers models."""
import importlib.util
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

import alter  # noqa: E402,F401
from alter.registry import MODELS  # noqa: E402

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_UNET_CONFIG = os.path.join(ROOT, 'configs', '_base_', 'models', 'tiny_unet.py')
SD21_UNET_CONFIG = os.path.join(ROOT, 'configs', '_base_', 'models', 'sd21_unet.py')


def build_tiny_unet(seed: int = 0, **arch):
    """The tiny SD2.1-topology UNet of configs/_base_/models/tiny_unet.py, random weights;
    ``arch`` overrides its diffusers config (e.g. ``in_channels=9`` for inpainting)."""
    torch.manual_seed(seed)
    cfg = Config.fromfile(TINY_UNET_CONFIG).model.unet
    cfg.arch.update(arch)
    return MODELS.build(cfg).eval()


@pytest.fixture
def tiny_unet():
    return build_tiny_unet()


@pytest.fixture
def tiny_inputs():
    """(sample, timesteps, context) for a batch of 3 at the tiny UNet's latent size."""
    g = torch.Generator().manual_seed(1)
    return (torch.randn(3, 12, 16, 16, generator=g), torch.tensor([3, 400, 999]),
            torch.randn(3, 8, 32, generator=g))


@pytest.fixture(autouse=True)
def _mac_cache(tmp_path, monkeypatch):
    """Each test counts MACs into its own cache folder."""
    monkeypatch.setenv('ALTER_CACHE', str(tmp_path / 'cache'))


def load_tool(name: str):
    """``tools/<name>.py`` as a module, to call its functions in-process."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
