"""Wall-clock timing shared by every benchmark: warm-up calls first, then one time per call."""
from __future__ import annotations

import time

import numpy as np


def time_calls(fn, warmup: int, runs: int) -> np.ndarray:
    """Seconds of each of `runs` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times
