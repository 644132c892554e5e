"""The job queue as one serving process sees it: submit (through group commit), bulk submit, read, cancel; on the
shared pool. Raises the queue's own errors (scoring/job_queue.py) and StoreUnavailable when the database is down."""

from __future__ import annotations

import threading
from typing import Any

from scoring import job_queue
from serving.db_pool import ServingPool
from serving.group_commit import GroupCommit


class JobStore:
    def __init__(self, pool: ServingPool) -> None:
        self.pool = pool
        self._groups: dict[str, GroupCommit] = {}
        self._groups_lock = threading.Lock()

    def submit_job(self, model: str, job: job_queue.NewJob) -> job_queue.Submitted:
        """Queue one job through the process's group commit: answered once its own group has committed."""
        result = self._group(model).submit(job)
        if isinstance(result, job_queue.IdempotencyConflict):
            raise result
        return result

    def submit_bulk(self, model: str, jobs: list[job_queue.NewJob]) -> list[job_queue.Submitted]:
        """Queue all of a bulk request's jobs in one transaction, or none (IdempotencyConflict names the job)."""
        with self.pool.connection() as conn:
            return job_queue.submit_many(conn, model, jobs, atomic=True)  # type: ignore[return-value]

    def get_job(self, job_id: Any, owner: str) -> job_queue.Job:
        with self.pool.connection() as conn:
            return job_queue.get(conn, job_id, owner)

    def cancel_job(self, job_id: Any, owner: str) -> job_queue.Job:
        with self.pool.connection() as conn:
            return job_queue.cancel(conn, job_id, owner)

    def _group(self, model: str) -> GroupCommit:
        group = self._groups.get(model)
        if group is None:
            with self._groups_lock:
                group = self._groups.setdefault(model, GroupCommit(lambda jobs: self._commit_group(model, jobs)))
        return group

    def _commit_group(self, model: str, jobs: list[job_queue.NewJob]) -> list[Any]:
        with self.pool.connection() as conn:
            try:
                return job_queue.submit_many(conn, model, jobs)
            except ValueError:  # one job holds a value JSON cannot store: the others must not fail with it
                if len(jobs) == 1:
                    raise
        out: list[Any] = []
        for job in jobs:
            try:
                out.append(self._commit_group(model, [job])[0])
            except Exception as exc:  # noqa: BLE001 - handed to that job's own request
                out.append(exc)
        return out
