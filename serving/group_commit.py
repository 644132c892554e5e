"""Group commit: concurrent submits of one serving process share one transaction (used by serving/job_store.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class _Slot:
    __slots__ = ("job", "done", "result")

    def __init__(self, job: Any) -> None:
        self.job = job
        self.done = False
        self.result: Any = None


class GroupCommit:
    """Concurrent submits of one serving process share one transaction: one multi-row INSERT, one NOTIFY and one
    commit for the whole group, so a commit's cost is spread over many jobs.

    Leader/follower, no extra thread: the first request to arrive while no group is being written becomes the
    leader and writes everything queued so far (up to `max_group`); requests arriving meanwhile queue up and
    one of them leads the next group as soon as the current one has committed. Every request returns only after
    the transaction holding its job committed (or with that transaction's error), so a 202 still means durable.
    With one request per process at a time (gunicorn sync workers) every group is a single job: the same cost
    as before, no added latency.
    """

    def __init__(self, write: Callable[[list[Any]], list[Any]], max_group: int = 512) -> None:
        self._write = write
        self._max = max_group
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        self._busy = False
        self.groups = 0  # groups written and jobs in them, for tests and the bench's figures
        self.jobs = 0

    def submit(self, job: Any) -> Any:
        slot = _Slot(job)
        with self._cond:
            self._queue.append(slot)
            while not slot.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True  # this request leads the next group
                group, self._queue = self._queue[:self._max], self._queue[self._max:]
                results: list[Any] = [RuntimeError("the group commit was interrupted")] * len(group)
                self._cond.release()
                try:
                    results = self._write([s.job for s in group])
                except Exception as exc:  # noqa: BLE001 - every request of the group answers it
                    results = [exc] * len(group)
                finally:
                    self._cond.acquire()
                    for s, r in zip(group, results, strict=True):
                        s.result, s.done = r, True
                    self.groups += 1
                    self.jobs += len(group)
                    self._busy = False
                    self._cond.notify_all()
        if isinstance(slot.result, Exception):
            raise slot.result
        return slot.result
