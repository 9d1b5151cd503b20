"""Evaluator weights: small safetensors files with JSON metadata (config, command, numbers)."""
import json
import os
from pathlib import Path
from typing import Dict, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from alter.utils.io import atomic_write

PathLike = Union[str, os.PathLike]

# Committed evaluator weights live in the repository's checkpoints/ folder.
CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / 'checkpoints'


def save_weights(module: nn.Module, path: PathLike, metadata: Dict[str, object],
                 dtype: torch.dtype = torch.float16) -> Path:
    """Write ``module``'s state dict (floating tensors cast to ``dtype``) and ``metadata``
    (each value JSON-encoded) to a safetensors file, atomically."""
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous()
               for k, v in module.state_dict().items()}
    encoded = {k: json.dumps(v) for k, v in metadata.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=encoded))


def load_weights(path: PathLike, what: str, create_command: str
                 ) -> Tuple[Dict[str, torch.Tensor], Dict[str, object]]:
    """float32 state dict and decoded metadata of a ``save_weights`` file; a missing
    file raises naming it and the command that creates it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'{what} weights not found: {path}; create them with '
                                f'`{create_command}`')
    with safe_open(str(path), framework='pt') as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, metadata


def load_module(cls, path: PathLike, what: str, create_command: str) -> nn.Module:
    """``cls(**metadata['config'])`` with the weights of a ``save_weights`` file, frozen, eval."""
    state, metadata = load_weights(path, what, create_command)
    model = cls(**metadata['config'])
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
