"""Side-by-side timing: interleaved repeats, medians, and the device they ran on."""
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int,
                sync: Callable[[], None] = lambda: None, warmup: int = 1) -> Dict[str, float]:
    """Median seconds of each function, measured A B C A B C ... after ``warmup`` calls each,
    so drifts of a shared machine hit every function alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def device_sync(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock: waits for queued CUDA work."""
    return torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)


def device_name(device: torch.device) -> str:
    """The device in words, e.g. ``NVIDIA H100 80GB HBM3`` or ``CPU (x86_64, 1 threads)``."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'
