"""The serving database of one worker: precomputed lookups and the job queue, through ONE connection pool.

Precomputed predictions are primary-key lookups in the spec's prediction table.

The date served by default is the latest *complete* one: the max prediction_date of a successful batch run in
ops.batch_runs (never a half-loaded day). It is cached for a few seconds so that a lookup is one query.

The single-entity lookup is the hottest route, so PostgreSQL renders its JSON document (`json_build_object`) and
the statement runs through libpq directly (prepared once per connection): one round trip, one text value, no
per-column conversion in Python. Measured in-process: ~70 µs less client CPU per lookup than a psycopg cursor
with row conversion and json.dumps.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import pq, sql
from psycopg.errors import error_from_result
from psycopg_pool import ConnectionPool, PoolTimeout

from scoring import job_queue, settings
from scoring.spec import ModelSpec
from scoring.store import reasons_table

log = logging.getLogger(__name__)


_DOWN_HOLD_S = 1.0  # after a pool timeout, requests fail fast for this long before the pool is tried again


class StoreUnavailable(RuntimeError):
    """The serving database cannot be reached (pool timeout or a broken connection)."""


@dataclass(frozen=True)
class Precomputed:
    entity_id: int
    prediction_date: dt.date
    score: float
    label: int | None
    model_version: int
    run_id: str
    scored_at: dt.datetime


class Store(Protocol):
    """What the data plane needs from the database (PredictionStore here; an in-memory fake in route tests)."""

    def latest_date(self) -> dt.date | None: ...
    def latest_features(self, entity_id: int) -> tuple[dt.date, dict[str, Any]] | None: ...
    def get_many(self, entity_ids: list[int], day: dt.date) -> dict[int, Precomputed]: ...
    def document(self, entity_id: int, day: dt.date) -> bytes | None: ...
    def reasons(self, entity_id: int, day: dt.date) -> list[dict[str, Any]]: ...
    def ping(self) -> bool: ...
    def submit_job(self, model: str, job: job_queue.NewJob) -> job_queue.Submitted: ...
    def submit_bulk(self, model: str, jobs: list[job_queue.NewJob]) -> list[job_queue.Submitted]: ...
    def get_job(self, job_id: Any, owner: str) -> job_queue.Job: ...
    def cancel_job(self, job_id: Any, owner: str) -> job_queue.Job: ...


class PredictionStore:
    def __init__(self, spec: ModelSpec, url: str, *, min_size: int = 1, max_size: int = 4,
                 timeout_s: float = 2.0, latest_ttl_s: float = 2.0, statement_timeout_ms: int | None = None,
                 lock_timeout_ms: int | None = None) -> None:
        self.spec = spec
        self.timeout_s = timeout_s
        self._down_until = 0.0  # monotonic time until which the database counts as unreachable
        self.latest_ttl_s = latest_ttl_s
        # Every serving query is bounded: one stuck behind a lock (a batch swap queued behind an analyst's long
        # read) or on a sick database fails fast as StoreUnavailable (503) instead of holding the worker.
        statement_ms = statement_timeout_ms or settings.read("SERVING_DB_STATEMENT_TIMEOUT_MS")
        lock_ms = lock_timeout_ms or settings.read("SERVING_DB_LOCK_TIMEOUT_MS")
        options = f"-c statement_timeout={int(statement_ms)} -c lock_timeout={int(lock_ms)}"
        # connect_timeout bounds a connection attempt; the pool's `timeout` bounds a request waiting for one.
        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False, timeout=timeout_s,
                                   kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s)),
                                           "options": options},
                                   reconnect_timeout=3600 * 24 * 365, name=f"serving-{spec.name}")
        schema, table = spec.prediction_table.split(".", 1)
        key = sql.Identifier(spec.source.entity_key)
        # Queries are rendered to strings once: psycopg caches the conversion of plain strings, while a
        # sql.Composed is converted again on every execute (~0.1 ms of a lookup's CPU).
        select = sql.SQL("SELECT {key}, prediction_date, score, label, model_version, run_id, scored_at FROM {table} "
                         "WHERE prediction_date = %s AND ").format(key=key, table=sql.Identifier(schema, table))
        self._by_key = (select + sql.SQL("{key} = ANY(%s)").format(key=key)).as_string()
        # The lookup document, in the documented key order; prediction_date / scored_at come out as ISO 8601,
        # score as the shortest exact float (what Python's json gives for the same double).
        self._document_q = sql.SQL(
            "SELECT json_build_object('model', {model}, 'entity_key', {key_name}, 'entity_id', {key}, "
            "'prediction_date', prediction_date, 'score', score, 'label', label, "
            "'model_version', model_version::text, 'run_id', run_id, 'scored_at', scored_at, "
            "'source', 'precomputed')::text FROM {table} WHERE prediction_date = $1 AND {key} = $2").format(
            model=sql.Literal(spec.name), key_name=sql.Literal(spec.source.entity_key), key=key,
            table=sql.Identifier(schema, table)).as_bytes(None)
        # The nightly reasons of an entity (models.yaml batch.explain), largest first
        self._reasons_q = sql.SQL(
            "SELECT feature, coalesce(to_jsonb(category), to_jsonb(value)), contribution FROM {table} "
            "WHERE prediction_date = %s AND {key} = %s ORDER BY rank").format(
            table=sql.Identifier(*reasons_table(spec).split(".", 1)), key=key).as_string()
        self._latest_q = ("SELECT max(prediction_date) FROM ops.batch_runs "
                          "WHERE model_name = %s AND status = 'success'")
        self._latest: tuple[dt.date | None, float] | None = None  # (date, fetched at monotonic)
        self._latest_lock = threading.Lock()
        # Live fallback for a lookup miss: the entity's feature row on the latest feature date.
        src = spec.source
        src_schema, src_table = src.table.split(".", 1)
        self._features_q = sql.SQL("SELECT {date}, {cols} FROM {table} WHERE {date} = %s AND {key} = %s").format(
            date=sql.Identifier(src.date_column), cols=sql.SQL(", ").join(map(sql.Identifier, spec.feature_names)),
            table=sql.Identifier(src_schema, src_table), key=sql.Identifier(src.entity_key)).as_string()
        self._feature_day_q = sql.SQL("SELECT max({date}) FROM {table}").format(
            date=sql.Identifier(src.date_column), table=sql.Identifier(src_schema, src_table)).as_string()
        self._feature_day: tuple[dt.date | None, float] | None = None
        self._groups: dict[str, GroupCommit] = {}

    def open(self) -> PredictionStore:
        self.pool.open(wait=False)  # never block worker start on the database
        return self

    def close(self) -> None:
        self.pool.close(timeout=2)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; an unreachable or unmigrated database surfaces as StoreUnavailable."""
        if time.monotonic() < self._down_until:  # just found unreachable: answer at once, keep the worker free
            raise StoreUnavailable(f"serving database unavailable: no connection within {self.timeout_s:g}s "
                                   f"(retried every {_DOWN_HOLD_S:g}s)")
        try:
            with self.pool.connection(timeout=self.timeout_s) as conn:
                yield conn
        except PoolTimeout as exc:
            # Every request would wait timeout_s for the pool while the database is down, holding a sync
            # worker (live predictions queue behind it): for a moment, the next ones fail fast instead.
            self._down_until = time.monotonic() + _DOWN_HOLD_S
            raise StoreUnavailable(f"serving database unavailable: no connection within {self.timeout_s:g}s") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"serving database unavailable: {exc}".strip()) from exc
        except psycopg.errors.UndefinedTable as exc:  # not migrated yet: unavailable, not a server error
            raise StoreUnavailable(f"serving database is not migrated for model '{self.spec.name}': "
                                   f"{exc}".strip()) from exc

    def _run(self, query: Any, params: tuple) -> list[tuple]:
        with self._connection() as conn:
            return conn.execute(query, params, prepare=True).fetchall()

    def latest_date(self) -> dt.date | None:
        """Latest prediction date with a successful batch run (cached for latest_ttl_s)."""
        cached = self._latest
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.latest_ttl_s:
            return cached[0]
        with self._latest_lock:
            cached = self._latest
            if cached is not None and time.monotonic() - cached[1] < self.latest_ttl_s:
                return cached[0]
            rows = self._run(self._latest_q, (self.spec.name,))
            day = rows[0][0] if rows else None
            self._latest = (day, time.monotonic())
            return day

    def latest_features(self, entity_id: int) -> tuple[dt.date, dict[str, Any]] | None:
        """The entity's feature values on the latest feature date (None when it has no row that day)."""
        cached = self._feature_day
        if cached is None or time.monotonic() - cached[1] >= self.latest_ttl_s:
            rows = self._run(self._feature_day_q, ())
            cached = self._feature_day = (rows[0][0] if rows else None, time.monotonic())
        if cached[0] is None:
            return None
        rows = self._run(self._features_q, (cached[0], entity_id))
        if not rows:
            return None
        return rows[0][0], dict(zip(self.spec.feature_names, rows[0][1:], strict=True))

    def get_many(self, entity_ids: list[int], day: dt.date) -> dict[int, Precomputed]:
        rows = self._run(self._by_key, (day, entity_ids))
        return {int(r[0]): Precomputed(int(r[0]), r[1], float(r[2]), None if r[3] is None else int(r[3]),
                                       int(r[4]), r[5], r[6]) for r in rows}

    def document(self, entity_id: int, day: dt.date) -> bytes | None:
        """The lookup's JSON document for the entity on `day` (None when there is no prediction)."""
        with self._connection() as conn:
            return _prepared_value(conn.pgconn, b"serving_lookup_document", self._document_q,
                                   [day.isoformat().encode(), str(entity_id).encode()])

    def reasons(self, entity_id: int, day: dt.date) -> list[dict[str, Any]]:
        """The entity's stored top-k contributions on `day`, rank order (empty when the run stored none)."""
        return [{"feature": f, "value": v, "contribution": float(c)}
                for f, v, c in self._run(self._reasons_q, (day, entity_id))]

    # The job queue, on the same pool (raises the queue's own errors; StoreUnavailable when the DB is down).
    def submit_job(self, model: str, job: job_queue.NewJob) -> job_queue.Submitted:
        """Queue one job through the process's group commit: answered once its own group has committed."""
        result = self._group(model).submit(job)
        if isinstance(result, job_queue.IdempotencyConflict):
            raise result
        return result

    def submit_bulk(self, model: str, jobs: list[job_queue.NewJob]) -> list[job_queue.Submitted]:
        """Queue all of a bulk request's jobs in one transaction, or none (IdempotencyConflict names the job)."""
        with self._connection() as conn:
            return job_queue.submit_many(conn, model, jobs, atomic=True)  # type: ignore[return-value]

    def get_job(self, job_id: Any, owner: str) -> job_queue.Job:
        with self._connection() as conn:
            return job_queue.get(conn, job_id, owner)

    def cancel_job(self, job_id: Any, owner: str) -> job_queue.Job:
        with self._connection() as conn:
            return job_queue.cancel(conn, job_id, owner)

    def _group(self, model: str) -> GroupCommit:
        group = self._groups.get(model)
        if group is None:
            with self._latest_lock:
                group = self._groups.setdefault(model, GroupCommit(lambda jobs: self._commit_group(model, jobs)))
        return group

    def _commit_group(self, model: str, jobs: list[job_queue.NewJob]) -> list[Any]:
        with self._connection() as conn:
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

    def ping(self) -> bool:
        try:
            self._run("SELECT 1", ())
            return True
        except StoreUnavailable:
            return False


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


_NOT_PREPARED = b"26000"  # invalid_sql_statement_name: this connection has not prepared the statement yet


def _prepared_value(pgconn: pq.abc.PGconn, name: bytes, query: bytes, params: list[bytes]) -> bytes | None:
    """The first column of the first row (None when no row) of a statement prepared once per connection."""
    result = pgconn.exec_prepared(name, params)
    if (result.status == pq.ExecStatus.FATAL_ERROR
            and result.error_field(pq.DiagnosticField.SQLSTATE) == _NOT_PREPARED):
        _check(pgconn, pgconn.prepare(name, query))
        result = pgconn.exec_prepared(name, params)
    _check(pgconn, result)
    return result.get_value(0, 0) if result.ntuples else None


def _check(pgconn: pq.abc.PGconn, result: pq.abc.PGresult) -> None:
    if result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        return
    if pgconn.status == pq.ConnStatus.BAD:  # the pool discards a broken connection when it comes back
        raise psycopg.OperationalError(pgconn.get_error_message() or "connection lost")
    raise error_from_result(result)
