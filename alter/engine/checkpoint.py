"""Loading our own mmengine checkpoints with torch >= 2.6.

torch.load now defaults to ``weights_only=True``, which refuses the
``HistoryBuffer``/numpy objects mmengine stores in its checkpoints. Resume and
``load_from`` read files this project wrote itself, so the local loader is
re-registered with ``weights_only=False``. Called by the tools, not on import.
"""
import os

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def trust_local_checkpoints() -> None:
    """Let mmengine load local checkpoints written by this project's runs."""

    @CheckpointLoader.register_scheme(prefixes='', force=True)
    def load_local(filename: str, map_location=None):
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'checkpoint {filename} does not exist')
        return torch.load(filename, map_location=map_location, weights_only=False)
