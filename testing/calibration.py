"""A fixed pure-Python workload whose time says how fast this machine runs Python right now.

The fast lane's time is printed as a multiple of it (tests/conftest.py samples it at the start, every
SAMPLE_EVERY tests and at the end of the run, and takes the median), so that its target holds on a slower or
busier machine as on a quiet fast one: a lane that got slower because its tests did shows as a higher ratio, one
that ran on a loaded machine does not.
"""

from __future__ import annotations

import time

EDGE_SAMPLES = 5  # at the start and at the end of a run
SAMPLE_EVERY = 10  # tests between two samples during the run


def workload() -> int:
    """What test code spends its pure-Python time on: dict and list building, string formatting, integer maths,
    sorting with a key function. Fixed: never change it without re-deriving the lane's target ratio (Makefile)."""
    counts: dict[str, int] = {}
    rows: list[tuple[int, str]] = []
    for i in range(12_000):
        key = f"k{i % 997}"
        counts[key] = counts.get(key, 0) + (i * i) % 7
        rows.append((i, key))
    rows.sort(key=lambda r: (r[1], -r[0]))
    return sum(counts.values()) + len(rows) + rows[0][0]


def sample() -> float:
    """Seconds of one `workload()` run."""
    t0 = time.perf_counter()
    workload()
    return time.perf_counter() - t0


def calibration_samples(n: int = EDGE_SAMPLES) -> list[float]:
    return [sample() for _ in range(n)]


if __name__ == "__main__":
    import statistics

    print(f"{statistics.median(calibration_samples(20)) * 1000:.1f} ms (median of 20)")
