"""Free TCP ports for the throwaway services the tests start."""

from __future__ import annotations

import random

from stack.pg import port_in_use


def free_run(count: int) -> int:
    """The first of `count` consecutive free ports below Linux's ephemeral range (32768-60999), where no outgoing
    connection of another program on a busy machine can take one between this check and the service's bind."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - count)
        if not any(port_in_use(base + i) for i in range(count)):
            return base
    raise RuntimeError("no run of free ports")
