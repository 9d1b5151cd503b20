"""Checks on tensors read from files."""
from typing import Dict, List

import torch


def non_finite(tensors: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, tensor in tensors.items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
