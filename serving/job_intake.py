"""The job queue's door as a service beside the prediction function: submits validated with live predict's
encoder and entity-key check (the same refusals; nothing is queued), then queued; a job read or cancelled for its
owner. No HTTP: failures are serving/failures.py's (and the encoder's InputError, located per job in a bulk)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from scoring import job_queue
from scoring.encoding import InputError, encode
from serving.failures import NotFound, QueueUnavailable, Refused, StoreUnavailable, TooMany
from serving.predict import Predictor
from serving.values import split_entity_key


class JobSink(Protocol):
    """What job intake needs from the database (serving/job_store.py; an in-memory fake in route tests)."""

    def submit_job(self, model: str, job: job_queue.NewJob) -> job_queue.Submitted: ...
    def submit_bulk(self, model: str, jobs: list[job_queue.NewJob]) -> list[job_queue.Submitted]: ...
    def get_job(self, job_id: Any, owner: str) -> job_queue.Job: ...
    def cancel_job(self, job_id: Any, owner: str) -> job_queue.Job: ...


class JobIntake:
    def __init__(self, predictor: Predictor, sink: JobSink, *, max_records: int, bulk_max_jobs: int,
                 ttl_s: float) -> None:
        self.predictor = predictor
        self.spec = predictor.spec
        self.sink = sink
        self.max_records = max_records  # SERVING_JOB_MAX_RECORDS
        self.bulk_max_jobs = bulk_max_jobs  # SERVING_JOB_BULK_MAX_JOBS
        self.ttl_s = ttl_s if ttl_s > 0 else None  # SERVING_JOB_TTL_S; 0 = never expire

    def submit(self, records: list[dict[str, Any]], idempotency_key: str | None, owner: str
               ) -> tuple[job_queue.Job, bool]:
        """Validate, then queue: (job, created). Validation needs only the spec, so submits are accepted even while
        no model version is loaded. The job is `owner`'s: its idempotency keys are its own."""
        if len(records) > self.max_records:
            raise TooMany("too_many_records", f"{len(records)} records in one job; the limit is "
                                              f"{self.max_records} (SERVING_JOB_MAX_RECORDS)")
        features = self._features(records)
        encode(self.spec, features)
        new = job_queue.NewJob(records, idempotency_key, owner=owner, ttl_s=self.ttl_s)
        return self._queued(lambda: self.sink.submit_job(self.spec.name, new))

    def submit_bulk(self, jobs: list[tuple[list[dict[str, Any]], str | None]], owner: str
                    ) -> list[tuple[job_queue.Job, bool]]:
        """Many jobs in one transaction, each with its own id and idempotency key: accepted whole or refused whole,
        the error naming the job and row (`job 3, row 0: ...`)."""
        if len(jobs) > self.bulk_max_jobs:
            raise TooMany("too_many_jobs", f"{len(jobs)} jobs in one bulk submit; the limit is "
                                           f"{self.bulk_max_jobs} (SERVING_JOB_BULK_MAX_JOBS)")
        total = sum(len(records) for records, _ in jobs)
        if total > self.max_records:
            raise TooMany("too_many_records", f"{total} records in one bulk submit; the limit is "
                                              f"{self.max_records} (SERVING_JOB_MAX_RECORDS)")
        self._validate_bulk([records for records, _ in jobs])
        new = [job_queue.NewJob(r, k, owner=owner, ttl_s=self.ttl_s) for r, k in jobs]
        return self._queued(lambda: self.sink.submit_bulk(self.spec.name, new))

    def get(self, raw_id: str, owner: str) -> job_queue.Job:
        return self._job_op(self.sink.get_job, raw_id, owner)

    def cancel(self, raw_id: str, owner: str) -> job_queue.Job:
        return self._job_op(self.sink.cancel_job, raw_id, owner)

    def _features(self, records: list[dict[str, Any]]) -> Any:
        # the entity key checked and set aside as live predict does (no row limit here: jobs have their own)
        return split_entity_key(records, self.predictor.entity_key)[0]

    @staticmethod
    def _queued(submit: Callable[[], Any]) -> Any:
        try:
            return submit()
        except job_queue.IdempotencyConflict as exc:
            raise Refused("idempotency_key_reused", str(exc), row=exc.index) from exc
        except StoreUnavailable as exc:
            raise QueueUnavailable(f"the job queue database is unavailable: {exc}") from exc
        except ValueError as exc:  # a value the encoder accepts but JSON storage cannot hold (e.g. Infinity)
            raise Refused("invalid_input", str(exc)) from exc

    def _validate_bulk(self, jobs: list[list[dict[str, Any]]]) -> None:
        """All records in one encoder call (the cheap path); a failure is located and named per job."""
        flat = []
        for index, records in enumerate(jobs):
            try:
                flat.append(self._features(records))
            except InputError as exc:
                raise _in_job(exc, index, exc.row) from exc
        try:
            encode(self.spec, [rec for features in flat for rec in features])
            return
        except InputError as exc:
            if exc.row is not None:  # the flat row -> (job, row within the job)
                start = 0
                for index, features in enumerate(flat):
                    if exc.row < start + len(features):
                        raise _in_job(exc, index, exc.row - start) from exc
                    start += len(features)
        for index, features in enumerate(flat):  # no row named (e.g. a missing column): find the job
            try:
                encode(self.spec, features)
            except InputError as exc:
                raise _in_job(exc, index, exc.row) from exc

    @staticmethod
    def _job_op(op: Callable[[Any, str], job_queue.Job], raw_id: str, owner: str) -> job_queue.Job:
        """A job operation for its owner: another client's job is not found, exactly like one that does not exist."""
        try:
            job_id = job_queue.parse_job_id(raw_id)
        except ValueError as exc:
            raise Refused("malformed_job_id", str(exc)) from exc
        try:
            return op(job_id, owner)
        except job_queue.JobNotFound as exc:
            raise NotFound("job_not_found", str(exc)) from exc
        except job_queue.JobStateError as exc:
            raise Refused("job_not_cancellable", str(exc)) from exc
        except StoreUnavailable as exc:
            raise QueueUnavailable(f"the job queue database is unavailable: {exc}") from exc


def _in_job(exc: InputError, index: int, row: int | None) -> InputError:
    """The same InputError, its message located in a bulk submit: `job 3, row 0: ...`."""
    message = re.sub(r"^row \d+: ", "", str(exc))
    where = f"job {index}, row {row}" if row is not None else f"job {index}"
    return type(exc)(f"{where}: {message}", column=exc.column, row=row)
