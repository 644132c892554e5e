"""Batch scoring of one (model, date): the steps the predict_<model> DAG tasks call, and the same run in one
process (`python -m scoring.batch --model churn --date 2026-11-01`).

    check_features -> prepare (staging table + 'running' run) -> score_shard x N -> swap -> drop_expired

* Streaming: a shard streams its features out, scores them and streams predictions in with binary COPY
  (`scoring.batch_pipeline`); memory is bounded by the chunk size, not the day size. The statements and the DDL
  are in `scoring.batch_sql`; this module decides when they run, in which transaction, and what failure means.
* Atomic, idempotent: shards load the run's own staging table (`<table>_stage_pYYYYMMDD_r<batch run id>`) that
  nobody reads; `swap` replaces the date's partition with it in ONE transaction (detach + drop old, attach
  staged, record success). A kill mid-load rolls back the shard's transaction and leaves the old partition
  untouched; the next `prepare` drops the leftovers.
* Runs of one (model, date) never collide: the run prepared last owns the date; the swap checks that under an
  advisory lock per (model, date), so an older run still loading fails ("superseded") instead of swapping.
* Lookups never stall behind the swap: the swap (and retention) waits at most BATCH_SWAP_LOCK_TIMEOUT_MS for its
  locks per attempt (a lookup queued behind it waits as long), backs off and retries until BATCH_SWAP_DEADLINE_S,
  then fails the run naming who holds the table; the old day stays, and a retried swap can still swap.
* Rejects: invalid rows are re-read raw and kept in ops.prediction_rejects with the exact reason; a reject
  ratio above spec.batch.reject_threshold fails the run and keeps the previous predictions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import psycopg

from scoring import batch_pipeline, batch_sql, settings, store
from scoring.registry import Resolved
from scoring.scorer import Scorer
from scoring.spec import ModelSpec

log = logging.getLogger(__name__)


class BatchError(RuntimeError):
    """A batch run cannot proceed; the message says why (and which model, date, table or column)."""


class EmptyPartitionError(BatchError):
    pass


class SourceSchemaError(BatchError):
    pass


class RejectThresholdError(BatchError):
    pass


class SupersededError(BatchError):
    """A later run of the same (model, date) was prepared: it owns the date, this one does not swap."""


class LockDeadlineError(BatchError):
    """The swap (or retention) could not take its locks before its deadline; nothing was changed."""


T = TypeVar("T")


@dataclass(frozen=True)
class LockPolicy:
    """How the swap and retention take their table locks: each attempt waits at most `lock_timeout_ms` (so a
    lookup queued behind it waits at most that long), then backs off; after `deadline_s` the step fails."""

    lock_timeout_ms: int = settings.setting("BATCH_SWAP_LOCK_TIMEOUT_MS")
    deadline_s: float = settings.setting("BATCH_SWAP_DEADLINE_S")

    @classmethod
    def from_env(cls) -> LockPolicy:
        return settings.load(cls)


def with_lock_retry(conn: psycopg.Connection, spec: ModelSpec, what: str, attempt: Callable[[], T],
                    policy: LockPolicy | None = None) -> T:
    """Run `attempt` in a transaction with a short lock_timeout, retried with backoff until the deadline."""
    policy = policy or LockPolicy.from_env()
    started = time.monotonic()
    delay, attempts = 0.05, 0
    while True:
        attempts += 1
        batch_sql.idle(conn)
        try:
            with conn.transaction():
                batch_sql.set_lock_timeout(conn, policy.lock_timeout_ms)
                return attempt()
        except psycopg.errors.LockNotAvailable:
            waited = time.monotonic() - started
            if waited + delay > policy.deadline_s:
                holders = "; ".join(batch_sql.lock_holders(conn, spec.prediction_table)) or "no one any more"
                conn.commit()
                raise LockDeadlineError(
                    f"model '{spec.name}': {what} could not lock {spec.prediction_table} within "
                    f"{policy.deadline_s:g}s ({attempts} attempts of {policy.lock_timeout_ms} ms; "
                    f"BATCH_SWAP_DEADLINE_S); held by: {holders}. Nothing was changed: the previous predictions "
                    f"are served") from None
            log.info("model %s: %s waits for locks on %s (attempt %d, %.1fs)", spec.name, what,
                     spec.prediction_table, attempts, waited)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)


@dataclass(frozen=True)
class BatchPlan:
    """What `prepare` decided for a run; JSON-serialisable (it travels between Airflow tasks as XCom)."""

    model: str
    day: str  # ISO date
    run_id: str
    version: str
    shards: int
    batch_run_id: int
    staging_table: str  # schema.table
    reasons_staging_table: str | None = None  # the reasons' (models.yaml batch.explain), swapped in with it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchPlan:
        return cls(**data)

    @property
    def date(self) -> dt.date:
        return dt.date.fromisoformat(self.day)


@dataclass(frozen=True)
class ShardResult:
    shard: int
    rows_scored: int
    rows_rejected: int
    duration_s: float
    skipped: bool = False  # already loaded by an earlier attempt


@dataclass(frozen=True)
class RunResult:
    plan: BatchPlan
    rows_scored: int
    rows_rejected: int
    duration_s: float
    resolved: Resolved | None = None  # what run_batch's version resolved to and how it passed the gate rule


def source_column_types(conn: psycopg.Connection, spec: ModelSpec) -> dict[str, str]:
    """Type of every column the model reads; SourceSchemaError naming the table or column when one is unusable."""
    src = spec.source
    types = batch_sql.column_types(conn, src.table)
    if not types:
        raise SourceSchemaError(f"model '{spec.name}': feature table {src.table} does not exist")
    for column in (src.entity_key, src.date_column):
        if column not in types:
            raise SourceSchemaError(f"model '{spec.name}': {src.table} has no column '{column}'")
    if types[src.entity_key] not in batch_sql.INTEGER_TYPES:
        raise SourceSchemaError(f"model '{spec.name}': entity key {src.table}.{src.entity_key} "
                                f"must be an integer column, is {types[src.entity_key]}")
    for feature in spec.features:
        found = types.get(feature.name)
        if found is None:
            raise SourceSchemaError(f"model '{spec.name}': {src.table} has no feature column '{feature.name}'")
        allowed = batch_sql.NUMERIC_TYPES | (batch_sql.TEXT_TYPES if feature.type == "category" else set())
        if found not in allowed:
            raise SourceSchemaError(f"model '{spec.name}': feature '{feature.name}' ({feature.type}) cannot be "
                                    f"read from {src.table}.{feature.name} of type {found}")
    return types


# ---------------------------------------------------------------------------------------------- the steps

def check_features(conn: psycopg.Connection, spec: ModelSpec, day: dt.date) -> dict[str, str]:
    """Fail clearly unless the date's feature rows exist and the source has every column the model needs."""
    types = source_column_types(conn, spec)
    found = batch_sql.has_feature_rows(conn, spec, day)
    conn.commit()
    if not found:
        src = spec.source
        raise EmptyPartitionError(f"model '{spec.name}': no feature rows in {src.table} for "
                                  f"{src.date_column} = {day} (the feature partition is missing or empty)")
    return types


def prepare(conn: psycopg.Connection, spec: ModelSpec, day: dt.date, run_id: str, version: str,
            shards: int | None = None) -> BatchPlan:
    """Record a 'running' run and create an empty staging table for (model, date), dropping leftovers."""
    shards = shards or spec.batch.shards
    batch_sql.idle(conn)
    with conn.transaction():
        batch_sql.lock_run(conn, spec, day)
        # A run that died (killed worker) stays 'running' forever otherwise; one still alive fails at its swap.
        conn.execute("UPDATE ops.batch_runs SET status = 'failed', finished_at = now(), "
                     "error = coalesce(error, 'abandoned: superseded by run ' || %s) "
                     "WHERE model_name = %s AND prediction_date = %s AND status = 'running'",
                     (run_id, spec.name, day))
        batch_run_id = conn.execute(
            "INSERT INTO ops.batch_runs (model_name, model_version, prediction_date, run_id, status, shards) "
            "VALUES (%s, %s, %s, %s, 'running', %s) RETURNING id",
            (spec.name, int(version), day, run_id, shards)).fetchone()[0]
        stage = batch_sql.staging_table_name(spec, day, batch_run_id)
        conn.execute("UPDATE ops.batch_runs SET staging_table = %s WHERE id = %s", (stage, batch_run_id))
        batch_sql.create_staging(conn, spec, stage, day, run_id, version)
        reasons_stage = None
        if spec.batch.explain is not None:
            store.ensure_reasons_table(conn, spec)
            layout = batch_sql.reasons_layout(spec)
            reasons_stage = batch_sql.staging_table_name(spec, day, batch_run_id, layout.parent)
            batch_sql.create_staging(conn, spec, reasons_stage, day, run_id, version, layout)
    _drop_leftovers(conn, spec, day, keep=stage)
    _drop_leftovers(conn, spec, day, keep=reasons_stage, parent=store.reasons_table(spec))
    return BatchPlan(model=spec.name, day=day.isoformat(), run_id=run_id, version=str(version), shards=shards,
                     batch_run_id=batch_run_id, staging_table=stage, reasons_staging_table=reasons_stage)


def _drop_leftovers(conn: psycopg.Connection, spec: ModelSpec, day: dt.date, keep: str | None,
                    parent: str | None = None) -> None:
    """Drop the staging tables earlier runs of the date left behind (killed, failed, superseded). One a live run
    is still loading is locked by its COPY: left to that run, which drops it when its swap is refused."""
    for stage in batch_sql.staging_tables_of_day(conn, spec, day, parent):
        if stage == keep:
            continue
        batch_sql.idle(conn)
        try:
            with conn.transaction():
                batch_sql.set_lock_timeout(conn, 100)
                batch_sql.drop_table(conn, stage)
        except psycopg.errors.LockNotAvailable:
            log.info("model %s date %s: staging table %s is in use; left to its run", spec.name, day, stage)
    conn.commit()


def score_shard(read_conn: psycopg.Connection, write_conn: psycopg.Connection, scorer: Scorer, plan: BatchPlan,
                shard: int, chunk_rows: int | None = None) -> ShardResult:
    """Score one shard into the staging table and record it, all in one transaction (a retry never duplicates)."""
    spec = scorer.spec
    if str(scorer.version) != str(plan.version):
        raise BatchError(f"model '{spec.name}': scorer holds version {scorer.version}, the run resolved "
                         f"version {plan.version}")
    if not 0 <= shard < plan.shards:
        raise BatchError(f"shard {shard} is outside 0..{plan.shards - 1}")
    started = time.perf_counter()
    types = source_column_types(read_conn, spec)
    read_conn.commit()
    batch_sql.idle(write_conn)
    with write_conn.transaction():
        # Lock the shard's bookkeeping row key so that two attempts of the same shard cannot both load.
        write_conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (plan.batch_run_id, shard))
        done = write_conn.execute("SELECT 1 FROM ops.batch_shards WHERE batch_run_id = %s AND shard = %s",
                                  (plan.batch_run_id, shard)).fetchone()
        if done:
            return ShardResult(shard, 0, 0, 0.0, skipped=True)
        query = batch_sql.feature_copy_sql(spec, types, plan.date, shard, plan.shards)
        streamed = batch_pipeline.stream_scores(read_conn, write_conn, scorer, query, plan.staging_table,
                                                chunk_rows or spec.batch.chunk_rows, plan.reasons_staging_table)
        read_conn.commit()
        batch_pipeline.keep_rejects(read_conn, write_conn, spec, plan.date, plan.run_id, streamed)
        duration = time.perf_counter() - started
        write_conn.execute("INSERT INTO ops.batch_shards (batch_run_id, shard, rows_scored, rows_rejected, "
                           "duration_s) VALUES (%s, %s, %s, %s, %s)",
                           (plan.batch_run_id, shard, streamed.scored, streamed.rejected, duration))
    log.info("model %s date %s shard %d/%d: %d rows scored, %d rejected in %.2fs", spec.name, plan.day, shard,
             plan.shards, streamed.scored, streamed.rejected, duration)
    return ShardResult(shard, streamed.scored, streamed.rejected, duration)


def fail_run(conn: psycopg.Connection, plan: BatchPlan, error: str, *, drop_staging: bool = True) -> None:
    """Mark the run failed with its reason; the previous predictions for the date stay as they are."""
    batch_sql.idle(conn)
    with conn.transaction():
        conn.execute("UPDATE ops.batch_runs SET status = 'failed', error = %s, finished_at = now(), "
                     "duration_s = extract(epoch FROM now() - started_at) WHERE id = %s",
                     (error[:4000], plan.batch_run_id))
        if drop_staging:
            for stage in (plan.staging_table, plan.reasons_staging_table):
                if stage:
                    batch_sql.drop_table(conn, stage)


def swap(conn: psycopg.Connection, spec: ModelSpec, plan: BatchPlan, policy: LockPolicy | None = None
         ) -> RunResult:
    """Check the run's totals, then make the staging table the date's partition in one transaction."""
    status, scored, rejected, duration = conn.execute(
        "SELECT status, rows_scored, rows_rejected, duration_s FROM ops.batch_runs WHERE id = %s",
        (plan.batch_run_id,)).fetchone()
    conn.commit()
    if status == "success":  # swapped already (a cleared/retried task): nothing to do twice
        return RunResult(plan, scored, rejected, float(duration or 0))
    shards_done, scored, rejected = conn.execute(
        "SELECT count(*), coalesce(sum(rows_scored), 0)::bigint, coalesce(sum(rows_rejected), 0)::bigint "
        "FROM ops.batch_shards WHERE batch_run_id = %s", (plan.batch_run_id,)).fetchone()
    conn.commit()
    if shards_done != plan.shards:
        raise BatchError(f"model '{spec.name}' date {plan.day}: only {shards_done} of {plan.shards} shards "
                         f"finished; not swapping")
    total = scored + rejected
    ratio = rejected / total if total else 1.0
    if total == 0 or ratio > spec.batch.reject_threshold:
        reason = (f"model '{spec.name}' date {plan.day}: {rejected} of {total} feature rows rejected "
                  f"({ratio:.2%} > reject_threshold {spec.batch.reject_threshold:.2%}); previous predictions "
                  f"kept, see ops.prediction_rejects where run_id = '{plan.run_id}'")
        fail_run(conn, plan, reason)
        raise RejectThresholdError(reason)

    _check_owner(conn, spec, plan)
    if not batch_sql.table_exists(conn, plan.staging_table):
        conn.commit()
        raise BatchError(f"model '{spec.name}' date {plan.day}: the run's staging table {plan.staging_table} is "
                         f"gone (dropped by a later run of the date?); not swapping")
    reasons = batch_sql.reasons_layout(spec)
    with conn.transaction():
        batch_sql.index_staging(conn, spec, plan.staging_table, plan.date)
        if plan.reasons_staging_table:
            explain = spec.batch.explain
            if explain is not None and not explain.all_rows:
                batch_sql.keep_top_reasons(conn, spec, plan.staging_table, plan.reasons_staging_table, explain.top)
            batch_sql.index_staging(conn, spec, plan.reasons_staging_table, plan.date, reasons)

    def attempt() -> float:
        batch_sql.lock_run(conn, spec, plan.date)  # (model, date): no prepare or other swap in between
        _check_owner(conn, spec, plan)  # again, under the lock: what is swapped in is this run's
        batch_sql.swap_partition(conn, spec, plan.staging_table, plan.date)
        # The day's reasons change with its scores, in the same transaction: the run's, or none (explain off)
        if plan.reasons_staging_table:
            batch_sql.swap_partition(conn, spec, plan.reasons_staging_table, plan.date, reasons)
        else:
            batch_sql.drop_day_partition(conn, reasons, plan.date)
        return conn.execute(
            "UPDATE ops.batch_runs SET status = 'success', error = NULL, rows_scored = %s, rows_rejected = %s, "
            "finished_at = now(), duration_s = extract(epoch FROM now() - started_at) WHERE id = %s "
            "RETURNING duration_s", (scored, rejected, plan.batch_run_id)).fetchone()[0]

    duration = with_lock_retry(conn, spec, f"the swap of {plan.day}", attempt, policy)
    log.info("model %s date %s: swapped in %d predictions (version %s, run %s, %d rejected)",
             spec.name, plan.day, scored, plan.version, plan.run_id, rejected)
    return RunResult(plan, scored, rejected, float(duration))


def _check_owner(conn: psycopg.Connection, spec: ModelSpec, plan: BatchPlan) -> None:
    owner = batch_sql.latest_run(conn, spec, plan.date)
    if owner is None or owner[0] != plan.batch_run_id:
        raise SupersededError(f"model '{spec.name}' date {plan.day}: run {plan.run_id} was superseded by run "
                              f"{owner[1] if owner else '?'} (prepared later; it owns the date); not swapping")


def swap_or_fail(conn: psycopg.Connection, spec: ModelSpec, plan: BatchPlan, policy: LockPolicy | None = None
                 ) -> RunResult:
    """`swap`, recording any failure on the run (a reject-threshold failure records itself). The staging table
    is kept for a retry of the swap, unless a later run owns the date."""
    try:
        return swap(conn, spec, plan, policy)
    except RejectThresholdError:
        raise
    except Exception as exc:
        conn.rollback()
        fail_run(conn, plan, f"swap: {type(exc).__name__}: {exc}", drop_staging=isinstance(exc, SupersededError))
        raise


def drop_expired(conn: psycopg.Connection, spec: ModelSpec, today: dt.date, policy: LockPolicy | None = None
                 ) -> list[str]:
    """Drop the prediction table's day partitions older than spec.batch.retention_days before `today`, one
    transaction each, with the swap's lock policy (a drop locks the parent table as DETACH does)."""
    cutoff = today - dt.timedelta(days=spec.batch.retention_days)
    old = batch_sql.partitions_before(conn, spec, cutoff) + batch_sql.partitions_before(
        conn, spec, cutoff, batch_sql.reasons_layout(spec))
    conn.commit()
    dropped = []
    for table in old:
        with_lock_retry(conn, spec, f"dropping {table}", lambda t=table: batch_sql.drop_table(conn, t), policy)
        dropped.append(table)
    if dropped:
        log.info("model %s: dropped %d partitions older than %s: %s", spec.name, len(dropped), cutoff, dropped)
    return dropped


# ---------------------------------------------------------------------------------------------- one process

def run_batch(spec: ModelSpec, day: dt.date, run_id: str, *, version: str | None = None, url: str | None = None,
              scorer: Scorer | None = None, shards: int | None = None, chunk_rows: int | None = None,
              policy: LockPolicy | None = None, allow_ungated: bool | None = None) -> RunResult:
    """The whole run in this process (CLI, bench, tests): the same steps the DAG runs as separate tasks, and the
    same rule for the version: resolved and approved by `resolve_approved` (NotApprovedError for a version the
    gate did not promote, unless `allow_ungated`, default SERVING_ALLOW_UNGATED).

    `scorer` replaces the registry lookup of `version`; tests hand in a wrapped one to stall or fail mid-load."""
    from scoring.db import connect
    from scoring.registry import CHAMPION, resolve_approved

    resolved = None
    with connect(url) as conn, connect(url) as read_conn:
        check_features(conn, spec, day)
        if scorer is None:
            resolved = resolve_approved(spec.name, version or CHAMPION, allow_ungated=allow_ungated)
            (log.warning if resolved.ungated else log.info)("model %s: %s", spec.name, resolved.describe())
            scorer = Scorer.from_registry(spec, resolved.version)
        plan = prepare(conn, spec, day, run_id, scorer.version, shards)
        try:
            for shard in range(plan.shards):
                score_shard(read_conn, conn, scorer, plan, shard, chunk_rows)
        except Exception as exc:
            conn.rollback()
            fail_run(conn, plan, f"{type(exc).__name__}: {exc}")
            raise
        return replace(swap_or_fail(conn, spec, plan, policy), resolved=resolved)


def main(argv: list[str] | None = None) -> int:
    from scoring.db import database_url
    from scoring.registry import RegistryError
    from scoring.settings import CoreSettings, SettingsError
    from scoring.spec import SpecError, load_spec

    parser = argparse.ArgumentParser(description="Score one model for one date into its prediction table.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--date", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--version", default=None, help="model version (default: the champion alias)")
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--chunk-rows", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_id = args.run_id or f"cli__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    try:  # a bad setting or model name stops here, in one line, before any work
        spec = load_spec(args.model)
        LockPolicy.from_env()
        CoreSettings.from_env()  # SERVING_ALLOW_UNGATED, DATABASE_URL, ...
        database_url()
    except (SettingsError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_batch(spec, args.date, run_id, version=args.version, shards=args.shards,
                           chunk_rows=args.chunk_rows)
    except (BatchError, RegistryError) as exc:  # e.g. a version the gate did not promote, named
        print(f"error: {exc}", file=sys.stderr)
        return 1
    resolved = result.resolved
    if resolved is not None and resolved.ungated:
        print(f"warning: wrote {result.rows_scored} predictions of model '{args.model}' with {resolved.describe()}",
              file=sys.stderr)
    print(json.dumps({"model": args.model, "date": str(args.date), "version": result.plan.version,
                      "gate_decision": resolved.decision if resolved else None,
                      "ungated": bool(resolved and resolved.ungated),
                      "rows_scored": result.rows_scored, "rows_rejected": result.rows_rejected,
                      "duration_s": round(result.duration_s, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
