"""Side-by-side timing: interleaved repeats, medians, and the device they ran on.

Two clocks: ``wall`` (``time.perf_counter``, latency as a user sees it) and ``cpu``
(``time.process_time``, the CPU seconds of this process across its threads): on a
CPU shared with other processes the wall clock also counts the time they hold the
cores, while the CPU clock counts only the work timed, which equals the wall time
of a single-threaded run on an idle machine. Asynchronous devices (CUDA) need
``wall`` after a sync.
"""
import platform
import random
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
from tqdm import tqdm


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int,
                sync: Callable[[], None] = lambda: None, warmup: int = 1,
                progress: Optional[str] = None,
                clock: Callable[[], float] = time.perf_counter,
                shuffle: Optional[random.Random] = None) -> Dict[str, float]:
    """Median seconds of each function, measured A B C A B C ... after ``warmup`` calls each,
    so drifts of a shared machine hit every function alike; ``progress``: the label of a
    progress bar over the repeats (none when None); ``clock``: one of ``CLOCKS``;
    ``shuffle``: draws a new order for every repeat, so that no function always follows
    the same one (what a call leaves in caches and the allocator favours its successor)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in tqdm(range(repeats), desc=progress, disable=progress is None):
        order = list(fns.items())
        if shuffle is not None:
            shuffle.shuffle(order)
        for name, fn in order:
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


CLOCKS: Dict[str, Callable[[], float]] = dict(wall=time.perf_counter, cpu=time.process_time)


def device_sync(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock: waits for queued CUDA work."""
    return torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)


def device_name(device: torch.device, threads: Optional[int] = None) -> str:
    """The device in words, e.g. ``NVIDIA H100 80GB HBM3`` or ``CPU (x86_64, 1 threads)``;
    ``threads``: of the process that runs there (default: this one's)."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads() if threads is None else threads
    return f'CPU ({platform.processor() or platform.machine()}, {threads} threads)'
