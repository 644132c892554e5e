"""The async prediction worker, the "job worker" (a gunicorn worker serves HTTP; this one drains the job queue):
`SERVING_MODEL=churn python -m serving.job_worker`.

Loop: claim up to WORKER_BATCH_SIZE queued jobs (FOR UPDATE SKIP LOCKED, leased), score all their records in one
call of the serving prediction function (serving/predict.py: micro-batch), write results and failures in one
transaction, repeat; when the queue is empty, sleep on LISTEN/NOTIFY (woken by submits) with a polling fallback.
Run as many side by side as you like.

- Hot reload: the same ModelHolder as the online app; every batch uses the version current when it starts.
- Failure: a job whose scoring fails is retried (with backoff) up to its max attempts, then `failed` with the
  reason; a poison job fails alone (scoring falls back to one job at a time when the batch call fails).
- Crash: a SIGKILLed worker's jobs are reclaimed by any worker once their lease expires.
- Slow batches: while a claim is being scored, a background thread renews its leases every lease/3 (fenced on
  the claim), so a batch slower than the lease is not reclaimed by another worker; a dead worker stops renewing.
- Memory: a claim stops adding jobs once their payloads reach WORKER_MAX_CLAIM_BYTES (always at least one job).
- Expiry: queued jobs past their TTL (set at submit) end `expired` with the reason, swept with the reclaims.
- SIGTERM/SIGINT: the batch in hand is finished and written, anything still held is released, exit 0.
- PostgreSQL restart: reconnect with backoff; results scored before the outage are written after it (fenced, so
  a job reclaimed by another worker meanwhile is not written twice).

Settings (env): SERVING_MODEL, SERVING_MODEL_REF, SERVING_POLL_INTERVAL_S, SERVING_BOOSTER_THREADS, DATABASE_URL
(shared with the online app), WORKER_BATCH_SIZE (256 jobs), WORKER_MAX_BATCH_RECORDS (50000),
WORKER_LEASE_S (30), WORKER_MAX_CLAIM_BYTES (32 MiB), WORKER_IDLE_POLL_S (2), WORKER_RETRY_BACKOFF_S (1),
WORKER_LINGER_MS (10: after a claim that was not full, a short wait so that one-by-one submits are claimed together),
WORKER_SHADOW_INTERVAL_S (5: the online shadow's passes, serving/shadow.py; 0 = off).

Tests inject faults by handing in `wrap_scorer` (see testing/faulty_worker.py); nothing here reads a fault switch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from scoring import job_queue
from scoring.db import database_url
from scoring.scorer import Scorer
from scoring.settings import load, setting
from scoring.spec import ModelSpec, load_spec
from serving.config import ConfigError, Settings
from serving.model_holder import ModelHolder
from serving.predict import Predictor

if TYPE_CHECKING:
    from serving.shadow import OnlineShadow

log = logging.getLogger("serving.job_worker")

_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass(frozen=True)
class JobWorkerSettings:
    # names, defaults and bounds (positive sizes and lease, backoff not negative) are declared in scoring/settings.py
    batch_size: int = setting("WORKER_BATCH_SIZE")
    max_batch_records: int = setting("WORKER_MAX_BATCH_RECORDS")  # records per scorer call (jobs carry many)
    lease_s: float = setting("WORKER_LEASE_S")
    max_claim_bytes: int = setting("WORKER_MAX_CLAIM_BYTES")
    idle_poll_s: float = setting("WORKER_IDLE_POLL_S")  # polling fallback when no NOTIFY arrives
    linger_ms: float = setting("WORKER_LINGER_MS")  # let a trickle of submits gather into one claim
    retry_backoff_s: float = setting("WORKER_RETRY_BACKOFF_S")
    log_level: str = setting("WORKER_LOG_LEVEL")
    shadow_interval_s: float = setting("WORKER_SHADOW_INTERVAL_S")  # online shadow (serving/shadow.py); 0 = off
    shadow_max_rows: int = setting("WORKER_SHADOW_MAX_ROWS")
    max_reconnect_backoff_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobWorkerSettings:
        return load(cls, env)


ScorerWrapper = Callable[[Scorer], Scorer]  # tests: a fault in front of the real scorer (duck-typed)


class LeaseKeeper:
    """Renews a claim's leases from a thread of its own while the claim is being scored (every lease/3), so a
    batch slower than the lease keeps its jobs; jobs already written are dropped from the renewal. Its own
    connection, opened only when a claim outlives the first renewal interval (fast claims cost nothing).
    A renewal that fails (database down) is retried at the next tick; if the lease lapses meanwhile the result
    write is fenced, as before. Renewal stops after MAX_HOLD_LEASES leases: a worker hung inside the scorer
    (alive, never finishing) must not hold its jobs forever; they are then reclaimed like a dead worker's."""

    MAX_HOLD_LEASES = 20

    def __init__(self, url: str, worker_id: str, jobs: list[job_queue.ClaimedJob], lease_s: float) -> None:
        self.url = url
        self.worker_id = worker_id
        self.lease_s = lease_s
        self._held = {j.id: j for j in jobs}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self.renewals = 0

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def written(self, jobs: list[job_queue.ClaimedJob]) -> None:
        with self._lock:
            for j in jobs:
                self._held.pop(j.id, None)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        give_up = time.monotonic() + self.MAX_HOLD_LEASES * self.lease_s
        try:
            while not self._stop.wait(self.lease_s / 3):
                if time.monotonic() > give_up:
                    log.error("claim held for %d leases without finishing: no more renewals (the jobs will be "
                              "reclaimed)", self.MAX_HOLD_LEASES)
                    return
                with self._lock:
                    held = list(self._held.values())
                if not held:
                    return
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                               application_name="worker-leases")
                    n = job_queue.renew_leases(conn, self.worker_id, held, self.lease_s)
                    self.renewals += 1
                    log.debug("renewed %d of %d lease(s)", n, len(held))
                except _DB_ERRORS as exc:
                    log.warning("lease renewal failed (%s); retrying", str(exc).strip()[:200])
                    conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


class JobWorker:
    def __init__(self, model: str, holder: ModelHolder, settings: JobWorkerSettings, url: str | None = None, *,
                 wrap_scorer: ScorerWrapper | None = None) -> None:
        self.model = model
        self.wrap_scorer = wrap_scorer  # tests only: a fault in front of the real scorer
        self.holder = holder
        # no row limit (jobs were bounded at submit), no payload log, no Prometheus row counter (no /metrics here)
        self.predictor = Predictor(holder.spec, holder, max_rows=None, source=None)
        self.settings = settings
        self.url = url or database_url()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._listen: psycopg.Connection | None = None
        self._pending: tuple[str, list[job_queue.Outcome]] | None = None  # scored, not yet written
        self._last_reclaim = 0.0
        self._announced: str | None = None
        self.totals = job_queue.WriteSummary()

    # --- connections -----------------------------------------------------------------------------------------
    def _connect(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                         application_name=f"worker-{self.model}")
        if self._listen is None or self._listen.closed:
            self._listen = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            self._listen.execute(f'LISTEN "{job_queue.channel(self.model)}"')

    def _disconnect(self) -> None:
        for conn in (self._conn, self._listen):
            if conn is not None:
                with contextlib.suppress(Exception):  # already broken
                    conn.close()
        self._conn = self._listen = None

    def _wait_for_work(self, timeout: float) -> bool:
        """Sleep until a NOTIFY for this model arrives (True), `timeout` passes or we are asked to stop."""
        assert self._listen is not None
        deadline = time.monotonic() + timeout
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # short slices so that SIGTERM is honoured within a second
            for _ in self._listen.notifies(timeout=min(left, 1.0), stop_after=1):
                return True
        return False

    def _linger(self) -> None:
        """A short wait before the next claim, so that jobs submitted one by one are claimed together: a claim,
        a scorer call and a result write per job would cost the worker more CPU than the submits themselves."""
        if self.settings.linger_ms > 0:
            self.stopping.wait(self.settings.linger_ms / 1000)

    # --- one step ---------------------------------------------------------------------------------------------
    def _scorer(self, scorer: Scorer) -> Scorer:
        return self.wrap_scorer(scorer) if self.wrap_scorer is not None else scorer

    def _predict(self, scorer: Scorer) -> job_queue.JobPredict:
        """The serving prediction function (serving/predict.py) on the batch's version: the same entity-key split,
        encoding and scoring as a live request."""
        key = self.predictor.entity_key
        return lambda records: self.predictor.predict_records(records, route="job", scorer=scorer).items(key)

    def _flush(self) -> None:
        if self._pending is None:
            return
        version, outcomes = self._pending
        summary = job_queue.write_outcomes(self._conn, self.worker_id, version, outcomes,
                                       retry_backoff_s=self.settings.retry_backoff_s)
        self._pending = None
        for key in ("done", "retried", "failed", "fenced"):
            setattr(self.totals, key, getattr(self.totals, key) + getattr(summary, key))
        if summary.fenced:
            log.warning("%d result(s) not written: their lease had expired and another worker took them",
                        summary.fenced)
        if summary.retried or summary.failed:
            errors = {o.error for o in outcomes if o.error}
            log.warning("%d job(s) will be retried, %d failed for good: %s", summary.retried, summary.failed,
                        "; ".join(sorted(errors))[:500])

    def step(self) -> int:
        """Claim, score and write one micro-batch: the number of jobs claimed (0 when there was nothing to do)."""
        self._connect()
        self._flush()
        now = time.monotonic()
        if now - self._last_reclaim >= min(self.settings.lease_s / 2, 5.0):
            requeued, failed = job_queue.reclaim_expired(self._conn, self.model)
            expired = job_queue.expire_queued(self._conn, self.model)
            self._last_reclaim = now
            if requeued or failed:
                log.warning("reclaimed %d job(s) with expired leases (%d out of attempts -> failed)",
                            requeued + failed, failed)
            if expired:
                log.warning("%d queued job(s) expired unclaimed (past their TTL)", expired)
        scorer = self.holder.current
        if scorer is None:  # no model yet: claim nothing, so jobs stay available to workers that have one
            return 0
        if self._announced != scorer.version:
            log.info("worker %s ready: model %s version %s", self.worker_id, self.model, scorer.version)
            self._announced = scorer.version
        jobs = job_queue.claim(self._conn, self.model, self.worker_id, self.settings.batch_size, self.settings.lease_s,
                               self.settings.max_claim_bytes)
        if not jobs:
            return 0
        with LeaseKeeper(self.url, self.worker_id, jobs, self.settings.lease_s) as keeper:
            for batch in job_queue.plan_batches(jobs, self.settings.max_batch_records):
                outcomes = job_queue.score_jobs(self._predict(self._scorer(scorer)), batch)
                self._pending = (scorer.version, outcomes)
                self._flush()  # committed batch by batch (see plan_batches)
                keeper.written(batch)
        return len(jobs)

    # --- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                claimed = self.step()
                if not claimed:
                    wait = self.settings.idle_poll_s if self.holder.current is not None else 1.0
                    if self._wait_for_work(wait):
                        self._linger()
                elif claimed < self.settings.batch_size:
                    self._linger()
                backoff = 0.5
            except _DB_ERRORS as exc:
                log.warning("database unavailable (%s); reconnecting in %.1fs", str(exc).strip()[:200], backoff)
                self._disconnect()
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.settings.max_reconnect_backoff_s)
        self._shutdown()
        return 0

    def _shutdown(self) -> None:
        """Write what was scored, give back anything still held (no attempt used), close."""
        try:
            self._connect()
            self._flush()
            released = job_queue.release(self._conn, self.worker_id)
            if released:
                log.info("released %d job(s) back to the queue", released)
        except _DB_ERRORS as exc:  # the leases will expire and other workers reclaim the jobs
            log.warning("could not release jobs on shutdown (%s); their leases will expire", exc)
        finally:
            self._disconnect()
        log.info("worker %s stopped: %d done, %d retried, %d failed, %d fenced", self.worker_id,
                 self.totals.done, self.totals.retried, self.totals.failed, self.totals.fenced)

    def stop(self, *_: Any) -> None:
        self.stopping.set()


def _log_level() -> str:
    try:
        return load(JobWorkerSettings).log_level.upper()
    except ValueError:  # JobWorkerSettings.from_env reports it, once logging is set up
        return "INFO"


def main(wrap_scorer: ScorerWrapper | None = None) -> int:
    logging.basicConfig(level=_log_level(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_env()
        worker_settings = JobWorkerSettings.from_env()
        spec = load_spec(settings.model)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    holder = ModelHolder(spec, ref=settings.model_ref, poll_interval_s=settings.poll_interval_s,
                         threads=settings.booster_threads, allow_ungated=settings.allow_ungated)
    worker = JobWorker(spec.name, holder, worker_settings, settings.database_url, wrap_scorer=wrap_scorer)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    holder.start()
    shadow = online_shadow(spec, settings, worker_settings).start()
    try:
        return worker.run()
    finally:
        shadow.stop()
        holder.stop()


def online_shadow(spec: ModelSpec, settings: Settings, worker_settings: JobWorkerSettings) -> OnlineShadow:
    """The challenger scoring the payload log's live rows beside the job loop (serving/shadow.py)."""
    from scoring.registry import CHALLENGER
    from serving.shadow import OnlineShadow

    challenger = ModelHolder(spec, ref=CHALLENGER, poll_interval_s=settings.poll_interval_s,
                             threads=settings.booster_threads, allow_ungated=True)  # shadow only: never answers
    return OnlineShadow(spec, settings.database_url or database_url(), challenger,
                        interval_s=worker_settings.shadow_interval_s, max_rows=worker_settings.shadow_max_rows)


if __name__ == "__main__":
    sys.exit(main())
