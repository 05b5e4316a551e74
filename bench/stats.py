"""What the workloads share: the process context of the load generators, percentiles."""

from __future__ import annotations

import multiprocessing as mp

ctx = mp.get_context("fork")  # workers inherit the shared counters; nothing to pickle


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)
