"""The training loop of the embedded benchmark's small networks (attribute classifier,
autoencoder): AdamW with a one-cycle learning rate on fresh Shapes-T2I ``train``
renders, each image seen once."""
import time
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from alter.datasets.shapes import ShapesT2I, collate


def train_on_renders(module: nn.Module,
                     step_loss: Callable[[dict], Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
                     steps: int, batch_size: int, lr: float, seed: int, pct_start: float,
                     weight_decay: float = 1e-4, log_every: int = 250) -> float:
    """Train ``module``; returns the seconds it took.

    Args:
        step_loss: batch (``shapes.collate`` of ``batch_size`` renders) -> (loss, named
            parts to print every ``log_every`` steps).
        pct_start: fraction of the steps spent warming the learning rate up to ``lr``.
    """
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps,
                                                    pct_start=pct_start)
    train = ShapesT2I('train', steps * batch_size, seed=seed)
    start = time.time()
    for step in range(steps):
        first = step * batch_size
        loss, parts = step_loss(collate([train[i] for i in range(first, first + batch_size)]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step == steps - 1:
            shown = '  '.join(f'{k}={v.item():.5g}' for k, v in parts.items())
            print(f'step {step:5d}  {time.time() - start:6.1f} s  loss={loss.item():.5g}  {shown}',
                  flush=True)
    return time.time() - start
