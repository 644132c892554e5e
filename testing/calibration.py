"""A fixed pure-Python workload whose time says how fast this machine runs Python right now.

The fast lane's time is printed as a multiple of it (tests/conftest.py), so that its target holds on a slower or
busier machine as on a quiet fast one: a lane that got slower because its tests did shows as a higher ratio, one
that ran on a loaded machine does not.
"""

from __future__ import annotations

import time

REPEATS = 5  # the fastest of these is kept: noise from other processes only ever adds time


def workload() -> int:
    """What test code spends its pure-Python time on: dict and list building, string formatting, integer maths,
    attribute lookups. Fixed: never change it without re-deriving the lane's target ratio (Makefile)."""
    counts: dict[str, int] = {}
    rows: list[tuple[int, str]] = []
    for i in range(12_000):
        key = f"k{i % 997}"
        counts[key] = counts.get(key, 0) + (i * i) % 7
        rows.append((i, key))
    rows.sort(key=lambda r: (r[1], -r[0]))
    return sum(counts.values()) + len(rows) + rows[0][0]


def calibrate(repeats: int = REPEATS) -> float:
    """Seconds of one `workload()` run, the fastest of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        workload()
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    print(f"{calibrate(20) * 1000:.1f} ms")
