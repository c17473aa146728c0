"""What every benchmark here shares: median wall time of repeated runs after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], reps: int, *, warmup: bool = True) -> float:
    """Median wall time of `reps` calls of `fn` (after one untimed call: compilation, caches)."""
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
