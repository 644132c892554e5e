"""The async prediction queue on PostgreSQL (ops.prediction_jobs): submit, claim, complete, retry, cancel, purge.

How it stays correct with several workers:
- a claim is one UPDATE over `SELECT ... FOR UPDATE SKIP LOCKED LIMIT n`, so two workers never take the same row;
- a claim sets the worker id, bumps `attempts` and sets a lease; result writes are fenced on (worker id, attempts),
  so a worker whose lease expired and was reclaimed can no longer write (a result is written exactly once);
- expired leases are put back to `queued` (or `failed` when out of attempts: a job that kills its worker every
  time must not loop forever);
- submit NOTIFYs `prediction_jobs_<model>` in its transaction, so idle workers wake as soon as it commits.

No Flask or Airflow here: the serving blueprint, the worker and the retention DAG call these functions.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

if TYPE_CHECKING:  # the scorer (XGBoost, MLflow, pandas) stays out of the queue's import: the DAG parses fast
    from scoring.scorer import Predictions

TABLE = "ops.prediction_jobs"
FINISHED = ("done", "failed", "cancelled")
DEFAULT_MAX_ATTEMPTS = 3


class QueueError(RuntimeError):
    """Base class of the queue's typed errors."""


class JobNotFound(QueueError):
    def __init__(self, job_id: uuid.UUID | str) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id


class JobStateError(QueueError):
    """The job is not in a state that allows the operation (e.g. cancelling a running job)."""

    def __init__(self, job_id: uuid.UUID | str, status: str, action: str) -> None:
        super().__init__(f"job {job_id} is {status}; only a queued job can be {action}")
        self.job_id = job_id
        self.status = status


class IdempotencyConflict(QueueError):
    """An idempotency key was reused with a different payload."""

    def __init__(self, model: str, key: str, job_id: uuid.UUID) -> None:
        super().__init__(f"idempotency key {key!r} was already used for job {job_id} of model '{model}' "
                         f"with different records")
        self.job_id = job_id


def channel(model: str) -> str:
    """The LISTEN/NOTIFY channel of a model's queue (model names are validated SQL identifiers)."""
    return f"prediction_jobs_{model}"


def parse_job_id(value: str) -> uuid.UUID:
    """A job id from a URL; ValueError (the caller's 400) when it is not a UUID."""
    try:
        return uuid.UUID(str(value))
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"malformed job id {value!r}: expected a UUID") from exc


def _json_safe(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records as storable JSON: NaN is a missing value to the encoder, so it is stored as null (jsonb has no
    NaN); infinities have no JSON form and are refused."""
    out = []
    for i, rec in enumerate(records):
        row = {}
        for key, value in rec.items():
            if isinstance(value, float) and not math.isfinite(value):
                if math.isnan(value):
                    value = None
                else:
                    raise ValueError(f"row {i}: feature '{key}' is {value}, which cannot be stored as JSON")
            row[key] = value
        out.append(row)
    return out


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    model: str
    status: str
    n_records: int
    attempts: int
    max_attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    model_version: int | None = None
    result: list[dict[str, Any]] | None = None
    error: str | None = None
    worker_id: str | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    result_writes: int = 0

    def to_dict(self, *, with_result: bool = True) -> dict[str, Any]:
        """The public view of a job (the GET /v1/jobs/<id> body)."""
        body: dict[str, Any] = {
            "id": str(self.id), "model": self.model, "status": self.status, "records": self.n_records,
            "attempts": self.attempts, "max_attempts": self.max_attempts,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }
        if self.status == "done" and with_result:
            body["model_version"] = str(self.model_version)
            body["predictions"] = self.result
        if self.error is not None:
            body["error"] = self.error
        return body


_JOB_COLUMNS = ("id, model_name AS model, status, n_records, attempts, max_attempts, created_at, started_at, "
                "finished_at, model_version, result, error, worker_id, idempotency_key, callback_url, result_writes")


def _job(row: dict[str, Any]) -> Job:
    return Job(**row)


def submit(conn: psycopg.Connection, model: str, records: Sequence[Mapping[str, Any]], *,
           idempotency_key: str | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
           callback_url: str | None = None) -> tuple[Job, bool]:
    """Queue a job of already-validated records; returns (job, created).

    With an idempotency key already used for this model, the existing job is returned (created=False) and no
    second job is made; reusing the key with different records raises IdempotencyConflict. Commits.
    """
    if not records:
        raise ValueError("a job needs at least one record")
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    payload = _json_safe(records)
    job_id = uuid.uuid4()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"INSERT INTO {TABLE} (id, model_name, payload, n_records, max_attempts, idempotency_key, callback_url) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT (model_name, idempotency_key) DO NOTHING RETURNING {_JOB_COLUMNS}",
            (job_id, model, Jsonb(payload), len(payload), max_attempts, idempotency_key, callback_url))
        row = cur.fetchone()
        if row is not None:
            cur.execute("SELECT pg_notify(%s, '')", (channel(model),))
            return _job(row), True
        # The key exists (possibly committed by a concurrent submit a moment ago): return that job.
        cur.execute(f"SELECT {_JOB_COLUMNS}, payload = %s AS same FROM {TABLE} "
                    f"WHERE model_name = %s AND idempotency_key = %s",
                    (Jsonb(payload), model, idempotency_key))
        existing = cur.fetchone()
    if existing is None:  # deleted by retention between the two statements: treat as new
        return submit(conn, model, records, idempotency_key=idempotency_key, max_attempts=max_attempts,
                      callback_url=callback_url)
    same = existing.pop("same")
    if not same:
        raise IdempotencyConflict(model, idempotency_key or "", existing["id"])
    return _job(existing), False


def get(conn: psycopg.Connection, job_id: uuid.UUID | str) -> Job:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_JOB_COLUMNS} FROM {TABLE} WHERE id = %s", (job_id,)).fetchone()
    conn.commit()
    if row is None:
        raise JobNotFound(job_id)
    return _job(row)


def cancel(conn: psycopg.Connection, job_id: uuid.UUID | str) -> Job:
    """Cancel a queued job (kept as `cancelled`); cancelling a cancelled job is a no-op. JobStateError when the
    job is running or finished, JobNotFound when there is no such job. Commits."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"UPDATE {TABLE} SET status = 'cancelled', finished_at = now() "
            f"WHERE id = %s AND status = 'queued' RETURNING {_JOB_COLUMNS}", (job_id,)).fetchone()
        if row is None:
            row = cur.execute(f"SELECT {_JOB_COLUMNS} FROM {TABLE} WHERE id = %s", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    job = _job(row)
    if job.status != "cancelled":
        raise JobStateError(job_id, job.status, "cancelled")
    return job


# ----------------------------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    records: list[dict[str, Any]]
    attempts: int  # with the worker id, the fencing token of this claim
    max_attempts: int


def claim(conn: psycopg.Connection, model: str, worker_id: str, limit: int, lease_s: float) -> list[ClaimedJob]:
    """Lease up to `limit` of the model's oldest claimable queued jobs to this worker. Commits."""
    with conn.transaction():
        rows = conn.execute(
            f"""UPDATE {TABLE} j
                SET status = 'running', attempts = j.attempts + 1, worker_id = %(worker)s,
                    lease_expires_at = now() + make_interval(secs => %(lease)s),
                    started_at = coalesce(j.started_at, now())
                FROM (SELECT id FROM {TABLE}
                      WHERE model_name = %(model)s AND status = 'queued' AND run_after <= now()
                      ORDER BY run_after
                      LIMIT %(limit)s
                      FOR UPDATE SKIP LOCKED) picked
                WHERE j.id = picked.id
                RETURNING j.id, j.payload, j.attempts, j.max_attempts""",
            {"worker": worker_id, "lease": float(lease_s), "model": model, "limit": int(limit)}).fetchall()
    jobs = [ClaimedJob(id=r[0], records=r[1], attempts=r[2], max_attempts=r[3]) for r in rows]
    jobs.sort(key=lambda j: j.id.int)  # stable order for the later writes (fewer lock-order surprises)
    return jobs


def plan_batches(jobs: Sequence[ClaimedJob], max_records: int) -> list[list[ClaimedJob]]:
    """Split one claim into scorer calls, in the order to run and commit them.

    First-time jobs go together (micro-batches of at most `max_records` records, at least one job each, bounding
    memory). Jobs tried before (attempts > 1: they failed, or their worker died holding them) come last and one
    at a time: if one of them is what kills workers, its batch-mates' results are already committed, and a crash
    costs only its own attempt.
    """
    batches: list[list[ClaimedJob]] = []
    current: list[ClaimedJob] = []
    total = 0
    for job in (j for j in jobs if j.attempts <= 1):
        if current and total + len(job.records) > max_records:
            batches.append(current)
            current, total = [], 0
        current.append(job)
        total += len(job.records)
    if current:
        batches.append(current)
    batches.extend([j] for j in jobs if j.attempts > 1)
    return batches


@dataclass(frozen=True)
class Outcome:
    """What scoring one claimed job gave: a result (one dict per record) or an error."""

    job: ClaimedJob
    result: list[dict[str, Any]] | None = None
    error: str | None = None


class JobScorer(Protocol):
    version: str

    def score(self, data: Any) -> Predictions: ...


def split_entity_key(records: Sequence[Mapping[str, Any]], entity_key: str | None
                     ) -> tuple[Sequence[Mapping[str, Any]], list[Any] | None]:
    """Records may carry the model's entity key (to tell results apart); it is not a feature, so it is set aside
    before scoring (as live predict does) and echoed in each prediction. Returns (features, keys or None)."""
    if not entity_key or not any(entity_key in rec for rec in records):
        return records, None
    return [{k: v for k, v in rec.items() if k != entity_key} for rec in records], [rec.get(entity_key)
                                                                                for rec in records]


def _predict(scorer: JobScorer, records: Sequence[Mapping[str, Any]], entity_key: str | None
             ) -> list[dict[str, Any]]:
    features, keys = split_entity_key(records, entity_key)
    rows = scorer.score(features).records()
    if keys is not None:
        for row, key in zip(rows, keys, strict=True):
            if key is not None:
                row[entity_key] = key
    return rows


def score_jobs(scorer: JobScorer, jobs: Sequence[ClaimedJob], *, entity_key: str | None = None) -> list[Outcome]:
    """Micro-batch: the records of all jobs in ONE scorer call, split back per job in order.

    If the batch call fails, each job is scored on its own so that one poison job fails alone and its
    batch-mates still succeed.
    """
    if not jobs:
        return []
    try:
        rows = _predict(scorer, [rec for job in jobs for rec in job.records], entity_key)
    except Exception:
        return [_score_one(scorer, job, entity_key) for job in jobs]
    out, start = [], 0
    for job in jobs:
        out.append(Outcome(job, result=rows[start:start + len(job.records)]))
        start += len(job.records)
    return out


def _score_one(scorer: JobScorer, job: ClaimedJob, entity_key: str | None) -> Outcome:
    try:
        return Outcome(job, result=_predict(scorer, job.records, entity_key))
    except Exception as exc:  # the reason is kept on the job; the worker goes on
        return Outcome(job, error=f"{type(exc).__name__}: {exc}")


@dataclass
class WriteSummary:
    done: int = 0
    retried: int = 0
    failed: int = 0
    fenced: int = 0  # outcomes dropped because the lease was lost (another worker owns the job now)


def write_outcomes(conn: psycopg.Connection, worker_id: str, model_version: str, outcomes: Sequence[Outcome], *,
                   retry_backoff_s: float = 1.0) -> WriteSummary:
    """Store results and failures of this worker's claims in one transaction. Commits.

    A failed job goes back to the queue (after `retry_backoff_s * 2**(attempts-1)`) until it has used its
    attempts, then ends `failed` with the reason.
    """
    summary = WriteSummary()
    good = [o for o in outcomes if o.error is None]
    bad = [o for o in outcomes if o.error is not None]
    with conn.transaction():
        if good:
            cur = conn.execute(
                f"""UPDATE {TABLE} j
                    SET status = 'done', result = v.result::jsonb, model_version = %s, finished_at = now(),
                        lease_expires_at = NULL, result_writes = j.result_writes + 1
                    FROM unnest(%s::uuid[], %s::text[], %s::int[]) AS v(id, result, attempts)
                    WHERE j.id = v.id AND j.status = 'running' AND j.worker_id = %s AND j.attempts = v.attempts""",
                (int(model_version), [o.job.id for o in good], [json.dumps(o.result) for o in good],
                 [o.job.attempts for o in good], worker_id))
            summary.done = cur.rowcount
        if bad:
            cur = conn.execute(
                f"""UPDATE {TABLE} j
                    SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'queued' END,
                        finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
                        run_after = now() + make_interval(secs => %s * 2 ^ (j.attempts - 1)),
                        error = v.error, worker_id = NULL, lease_expires_at = NULL
                    FROM unnest(%s::uuid[], %s::text[], %s::int[]) AS v(id, error, attempts)
                    WHERE j.id = v.id AND j.status = 'running' AND j.worker_id = %s AND j.attempts = v.attempts
                    RETURNING j.status""",
                (float(retry_backoff_s), [o.job.id for o in bad], [o.error for o in bad],
                 [o.job.attempts for o in bad], worker_id))
            statuses = [r[0] for r in cur.fetchall()]
            summary.failed = statuses.count("failed")
            summary.retried = statuses.count("queued")
    summary.fenced = len(outcomes) - summary.done - summary.failed - summary.retried
    return summary


def release(conn: psycopg.Connection, worker_id: str, job_ids: Sequence[uuid.UUID] | None = None) -> int:
    """Give this worker's running jobs back to the queue without using up an attempt (graceful shutdown).
    With job_ids None, every job the worker holds. Commits; returns how many."""
    with conn.transaction():
        cur = conn.execute(
            f"""UPDATE {TABLE} SET status = 'queued', attempts = attempts - 1, worker_id = NULL,
                    lease_expires_at = NULL
                WHERE status = 'running' AND worker_id = %s AND (%s::uuid[] IS NULL OR id = ANY(%s::uuid[]))""",
            (worker_id, None if job_ids is None else list(job_ids), None if job_ids is None else list(job_ids)))
        return cur.rowcount


def reclaim_expired(conn: psycopg.Connection, model: str | None = None) -> tuple[int, int]:
    """Jobs whose worker's lease ran out go back to the queue, or to `failed` once out of attempts.
    Returns (requeued, failed). Commits."""
    with conn.transaction():
        rows = conn.execute(
            f"""UPDATE {TABLE}
                SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                    finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
                    error = format('lease of worker %%s expired (attempt %%s of %%s): the worker died or hung',
                                   worker_id, attempts, max_attempts),
                    worker_id = NULL, lease_expires_at = NULL, run_after = now()
                WHERE status = 'running' AND lease_expires_at < now() AND (%s::text IS NULL OR model_name = %s)
                RETURNING status""", (model, model)).fetchall()
        if any(r[0] == "queued" for r in rows) and model is not None:
            conn.execute("SELECT pg_notify(%s, '')", (channel(model),))
    statuses = [r[0] for r in rows]
    return statuses.count("queued"), statuses.count("failed")


def purge_finished(conn: psycopg.Connection, older_than: dt.timedelta, *, batch_size: int = 10_000) -> int:
    """Delete done/failed/cancelled jobs that finished more than `older_than` ago, in batches (short locks).
    Returns how many were deleted. Commits after each batch."""
    if older_than.total_seconds() < 0:
        raise ValueError("older_than must not be negative")
    total = 0
    while True:
        with conn.transaction():
            cur = conn.execute(
                f"""DELETE FROM {TABLE} WHERE id IN (
                        SELECT id FROM {TABLE}
                        WHERE status IN ('done', 'failed', 'cancelled') AND finished_at < now() - %s
                        LIMIT %s FOR UPDATE SKIP LOCKED)""", (older_than, batch_size))
            deleted = cur.rowcount
        total += deleted
        if deleted < batch_size:
            return total


def counts(conn: psycopg.Connection, model: str | None = None) -> dict[str, int]:
    """Jobs per status (for metrics, the bench and tests)."""
    rows = conn.execute(f"SELECT status, count(*) FROM {TABLE} WHERE %s::text IS NULL OR model_name = %s "
                        f"GROUP BY status", (model, model)).fetchall()
    conn.commit()
    return {status: n for status, n in rows}


