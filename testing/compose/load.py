"""Side-effect-free load on the gateway while something is done to the deployment: every answer that is not the
expected one (a 5xx, a refused or reset connection, a timeout) is recorded as a failure. Each request opens its
own connection (as many independent clients do), so what is measured is the gateway and the replicas behind it,
not a client reusing a connection that a graceful nginx reload closed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import requests

Call = Callable[[], requests.Response]


@dataclass
class LoadReport:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.ok} ok, {len(self.failures)} failed in {self.seconds:.0f}s; statuses {dict(self.statuses)}"
                + (f"; first failures: {self.failures[:5]}" if self.failures else ""))


def _worker(calls: list[tuple[str, Call]], stop: threading.Event, report: LoadReport, lock: threading.Lock) -> None:
    i = 0
    while not stop.is_set():
        name, call = calls[i % len(calls)]
        i += 1
        try:
            resp = call()
            status, error = resp.status_code, (None if resp.status_code == 200 else resp.text[:200])
        except requests.RequestException as exc:
            status, error = 0, f"{type(exc).__name__}: {exc}"[:200]
        with lock:
            report.statuses[status] += 1
            if error is None:
                report.ok += 1
            else:
                report.failures.append(f"{name}: {status} {error}")
        time.sleep(0.01)


@contextmanager
def load(calls: list[tuple[str, Call]], threads: int = 4) -> Iterator[LoadReport]:
    """Run `calls` round-robin on `threads` threads for the duration of the block."""
    report, stop, lock = LoadReport(), threading.Event(), threading.Lock()
    workers = [threading.Thread(target=_worker, args=(calls[i:] + calls[:i], stop, report, lock), daemon=True)
               for i in range(threads)]
    began = time.monotonic()
    for w in workers:
        w.start()
    try:
        yield report
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
        report.seconds = time.monotonic() - began


def fresh(method: str, url: str, **kw) -> Call:  # noqa: ANN003
    """A request on a connection of its own."""
    headers = {**kw.pop("headers", {}), "Connection": "close"}
    return lambda: requests.request(method, url, headers=headers, timeout=20, **kw)
