"""What the speed benchmarks share: synthetic experts at a MAC budget and the cost of routing.

Used by ``tools/benchmark_speed.py`` and ``tools/benchmark_gpu.py``; timings are
interleaved medians (``alter.utils.timing``).
"""
import time
from typing import Callable

import torch
from torch import nn

from alter.inference.experts import ExpertSet, weights_fingerprint
from alter.inference.routing import ExpertRouter, TimestepRouting, call_timestep
from alter.registry import PRUNING_SPACES
from alter.units.macs import MacTable, architecture_key
from alter.utils.timing import interleaved


def synthetic_experts(unet: nn.Module, space: str, costs: MacTable, sparsity: float,
                      num_experts: int = 1, num_timesteps: int = 1000) -> ExpertSet:
    """Experts skipping units in descending MAC order until ``sparsity`` of all MACs is removed.

    Expert ``k`` keeps the ``k`` costliest units and skips from the next one on, so
    the masks differ; expert 0 skips the costliest units. The experts serve equal
    intervals of the ``num_timesteps`` training timesteps, expert 0 the first.
    """
    units = PRUNING_SPACES.build(dict(type=space)).find(unet)
    order = sorted(range(len(units)), key=lambda i: -costs.unit_macs[i])
    masks = []
    for k in range(num_experts):
        keep = [True] * len(units)
        removed = 0.0
        for i in order[k:]:
            if removed >= sparsity * costs.total_macs:
                break
            keep[i] = False
            removed += costs.unit_macs[i]
        masks.append(tuple(keep))
    route = tuple(t * num_experts // num_timesteps for t in range(num_timesteps))
    return ExpertSet(tuple(u.name for u in units), tuple(masks), route, space,
                     dict(key=architecture_key(unet)), {}, weights_fingerprint(unet))


def lookup_seconds(router: ExpertRouter, lookups: int = 10_000) -> float:
    """Mean seconds of one host-side routing lookup (``router.select``) over timesteps
    0..999; leaves the router dense."""
    start = time.perf_counter()
    for i in range(lookups):
        router.select(float(i % 1000))
    seconds = (time.perf_counter() - start) / lookups
    router.dense()
    return seconds


def timestep_read(call: Callable[[torch.Tensor], None], router: ExpertRouter,
                  timesteps: torch.Tensor, repeats: int, sync: Callable[[], None],
                  clock: Callable[[], float] = time.perf_counter) -> dict:
    """Seconds per UNet call that routing by the received timestep adds.

    ``call(timestep)`` calls the router's UNet on the benchmark's batch. Both loops
    make one UNet call per timestep of ``timesteps`` (a schedule's device timesteps,
    as pipelines pass them); one routes from a host copy of the schedule, the other
    (``TimestepRouting``) reads each received timestep, syncing the device. Also
    the read alone, on a device that has finished its work. ``clock`` times the loops
    (``alter.utils.timing.CLOCKS``).
    """
    host = timesteps.tolist()

    def from_host():
        for i, step in enumerate(timesteps):
            router.select(host[i])
            call(step)

    def from_read():
        routing = TimestepRouting(router)
        for step in timesteps:
            call(step)
        routing.remove()

    loops = interleaved({'host': from_host, 'read': from_read}, repeats, sync, clock=clock)
    router.dense()
    sync()
    reads = 10_000
    start = time.perf_counter()
    for _ in range(reads):
        call_timestep(timesteps[0])
    return dict(per_call=(loops['read'] - loops['host']) / len(host), loops=loops,
                isolated=(time.perf_counter() - start) / reads)
