"""Batch scoring of one (model, date): the code the predict_<model> DAG tasks call, step by step.

    check_features -> prepare (staging table + 'running' run) -> score_shard x N -> swap -> drop_expired

* Fast path: the date's features stream out with binary COPY as fixed-width float8 rows (categories are sent as
  their spec code, NULL as NaN, an unknown category as -1), are parsed per block with numpy, validated and
  encoded by `encode_columns(reject=True)`, scored by the shared `Scorer`, and stream into the staging table with
  binary COPY. Memory is bounded by the chunk size, not the day size.
* Atomic, idempotent: shards load a staging table that nobody reads; `swap` replaces the date's partition with
  it in ONE transaction (detach + drop old, attach staged, record success). A kill mid-load rolls back the
  shard's transaction and leaves the old partition untouched; the next `prepare` drops any staging leftovers.
* Rejects: invalid rows are re-read raw and kept in ops.prediction_rejects with the exact reason; a reject
  ratio above spec.batch.reject_threshold fails the run and keeps the previous predictions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from psycopg.types.json import Jsonb

from scoring.encoding import InputError, encode_columns, records_to_columns
from scoring.pgcopy import HEADER, TRAILER, copy_out, prediction_rows, read_fixed_rows
from scoring.scorer import Scorer
from scoring.spec import ModelSpec
from scoring.store import partition_name, split_table

log = logging.getLogger(__name__)

# Fault injection for the kill-mid-load test: seconds to sleep after the first chunk has been written.
FAULT_ENV = "SCORING_BATCH_FAULT_SLEEP_AFTER_CHUNK"
FAULT_MARKER = "batch-fault: first chunk written, sleeping"
_NUMERIC_TYPES = {"smallint", "integer", "bigint", "real", "double precision", "numeric"}
_TEXT_TYPES = {"text", "character varying", "character"}
_REJECT_FETCH = 5_000  # raw rows re-read per query when explaining rejects


class BatchError(RuntimeError):
    """A batch run cannot proceed; the message says why (and which model, date, table or column)."""


class EmptyPartitionError(BatchError):
    pass


class SourceSchemaError(BatchError):
    pass


class RejectThresholdError(BatchError):
    pass


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


# ---------------------------------------------------------------------------------------------- names and SQL

def _idle(conn: psycopg.Connection) -> None:
    """End an implicit transaction left open by a read, so that `conn.transaction()` really commits
    (inside an open transaction psycopg would only make a savepoint)."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        conn.commit()


def _ident(qualified: str) -> sql.Identifier:
    return sql.Identifier(*split_table(qualified))


def staging_table_name(spec: ModelSpec, day: dt.date) -> str:
    """predictions.churn + 2026-11-01 -> predictions.churn_stage_p20261101 (one per model and date)."""
    schema, table = split_table(spec.prediction_table)
    return f"{schema}.{table}_stage_p{day:%Y%m%d}"


def _lock_key(spec: ModelSpec, day: dt.date) -> str:
    return f"batch:{spec.name}:{day}"


def shard_filter(spec: ModelSpec, shard: int, shards: int) -> sql.Composable:
    """Rows of one shard: the entity key modulo the shard count (non-negative for negative keys too)."""
    if shards == 1:
        return sql.SQL("")
    key = sql.Identifier(spec.source.entity_key)
    return sql.SQL(" AND ((({key} % {n}) + {n}) % {n}) = {i}").format(key=key, n=sql.Literal(shards),
                                                                     i=sql.Literal(shard))


def _feature_expr(feature, column_type: str) -> sql.Composable:
    col = sql.Identifier(feature.name)
    if feature.type == "category" and column_type in _TEXT_TYPES:
        # spec code of the value; NULL stays missing (NaN); an unknown value becomes -1, which encode_columns
        # rejects; the exact value and reason are re-read for rejected rows only.
        # (a simple CASE costs the server ~20% less than array_position over a text[] per row)
        whens = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}::float8").format(sql.Literal(c), sql.Literal(i))
                                  for i, c in enumerate(feature.categories))
        return sql.SQL("CASE {col}::text {whens} ELSE CASE WHEN {col} IS NULL THEN 'NaN'::float8 "
                       "ELSE -1::float8 END END").format(col=col, whens=whens)
    return sql.SQL("COALESCE({col}::float8, 'NaN'::float8)").format(col=col)


def source_column_types(conn: psycopg.Connection, spec: ModelSpec) -> dict[str, str]:
    """Type of every column the model reads; SourceSchemaError naming the table or column when one is unusable."""
    schema, table = split_table(spec.source.table)
    rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s", (schema, table)).fetchall()
    types = dict(rows)
    if not types:
        raise SourceSchemaError(f"model '{spec.name}': feature table {spec.source.table} does not exist")
    for column in (spec.source.entity_key, spec.source.date_column):
        if column not in types:
            raise SourceSchemaError(f"model '{spec.name}': {spec.source.table} has no column '{column}'")
    if types[spec.source.entity_key] not in {"smallint", "integer", "bigint"}:
        raise SourceSchemaError(f"model '{spec.name}': entity key {spec.source.table}.{spec.source.entity_key} "
                                f"must be an integer column, is {types[spec.source.entity_key]}")
    for feature in spec.features:
        found = types.get(feature.name)
        if found is None:
            raise SourceSchemaError(f"model '{spec.name}': {spec.source.table} has no feature column "
                                    f"'{feature.name}'")
        allowed = _NUMERIC_TYPES | (_TEXT_TYPES if feature.type == "category" else set())
        if found not in allowed:
            raise SourceSchemaError(f"model '{spec.name}': feature '{feature.name}' ({feature.type}) cannot be "
                                    f"read from {spec.source.table}.{feature.name} of type {found}")
    return types


def feature_copy_sql(spec: ModelSpec, types: dict[str, str], day: dt.date, shard: int = 0,
                     shards: int = 1) -> sql.Composed:
    src = spec.source
    return sql.SQL("COPY (SELECT {key}::bigint, {exprs} FROM {table} WHERE {date} = {day} AND {key} IS NOT NULL"
                   "{shard}) TO STDOUT (FORMAT binary)").format(
        key=sql.Identifier(src.entity_key),
        exprs=sql.SQL(", ").join(_feature_expr(f, types[f.name]) for f in spec.features),
        table=_ident(src.table), date=sql.Identifier(src.date_column), day=sql.Literal(day),
        shard=shard_filter(spec, shard, shards))


# ---------------------------------------------------------------------------------------------- the steps

def check_features(conn: psycopg.Connection, spec: ModelSpec, day: dt.date) -> dict[str, str]:
    """Fail clearly unless the date's feature rows exist and the source has every column the model needs."""
    types = source_column_types(conn, spec)
    src = spec.source
    found = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} WHERE {d} = %s)").format(
        t=_ident(src.table), d=sql.Identifier(src.date_column)), (day,)).fetchone()[0]
    conn.commit()
    if not found:
        raise EmptyPartitionError(f"model '{spec.name}': no feature rows in {src.table} for "
                                  f"{src.date_column} = {day} (the feature partition is missing or empty)")
    return types


def prepare(conn: psycopg.Connection, spec: ModelSpec, day: dt.date, run_id: str, version: str,
            shards: int | None = None) -> BatchPlan:
    """Record a 'running' run and create an empty staging table for (model, date), dropping leftovers."""
    shards = shards or spec.batch.shards
    stage = staging_table_name(spec, day)
    _idle(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_lock_key(spec, day),))
        # A run that died (killed worker) stays 'running' forever otherwise.
        conn.execute("UPDATE ops.batch_runs SET status = 'failed', finished_at = now(), "
                     "error = coalesce(error, 'abandoned: superseded by run ' || %s) "
                     "WHERE model_name = %s AND prediction_date = %s AND status = 'running'",
                     (run_id, spec.name, day))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(stage)))
        conn.execute(sql.SQL("CREATE TABLE {stage} (LIKE {parent} INCLUDING DEFAULTS)").format(
            stage=_ident(stage), parent=_ident(spec.prediction_table)))
        # Shards COPY only (key, score, label); the per-run constants come from column defaults.
        conn.execute(sql.SQL(
            "ALTER TABLE {stage} ALTER prediction_date SET DEFAULT {day}, ALTER model_name SET DEFAULT {name}, "
            "ALTER model_version SET DEFAULT {version}, ALTER run_id SET DEFAULT {run}, "
            "ALTER scored_at SET DEFAULT now()").format(
            stage=_ident(stage), day=sql.Literal(day), name=sql.Literal(spec.name),
            version=sql.Literal(int(version)), run=sql.Literal(run_id)))
        batch_run_id = conn.execute(
            "INSERT INTO ops.batch_runs (model_name, model_version, prediction_date, run_id, status, shards, "
            "staging_table) VALUES (%s, %s, %s, %s, 'running', %s, %s) RETURNING id",
            (spec.name, int(version), day, run_id, shards, stage)).fetchone()[0]
    return BatchPlan(model=spec.name, day=day.isoformat(), run_id=run_id, version=str(version), shards=shards,
                     batch_run_id=batch_run_id, staging_table=stage)


def _fault_sleep() -> None:
    seconds = float(os.environ.get(FAULT_ENV, "0") or 0)
    if seconds > 0:
        print(FAULT_MARKER, file=sys.stderr, flush=True)
        time.sleep(seconds)


def _prefetch(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Run `items` in a thread, `depth` items ahead: the next COPY block is received and parsed while this
    thread encodes and scores the current one (XGBoost and numpy release the GIL)."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=run, name="batch-copy-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


class _BoundedQueuedWriter(QueuedLibpqWriter):
    """psycopg's queued COPY writer with a short queue: its default 1,024 slots of up to 128 kB would let
    memory grow by ~128 MB whenever the server is slower than scoring; a short queue makes scoring wait."""

    def __init__(self, cursor: psycopg.Cursor, slots: int = 32) -> None:
        super().__init__(cursor)
        self._queue = queue.Queue(maxsize=slots)


def _stream_scores(read_conn: psycopg.Connection, write_conn: psycopg.Connection, scorer: Scorer,
                   plan: BatchPlan, shard: int, types: dict[str, str],
                   chunk_rows: int) -> tuple[int, list[np.ndarray], list[list[InputError]]]:
    """COPY features out -> encode -> score -> COPY predictions into the staging table (inside write_conn's
    transaction). Returns rows scored and, per chunk, the keys and first errors of rejected rows."""
    spec = scorer.spec
    columns = ["key", "score"] + (["label"] if spec.is_classifier else [])
    copy_in = sql.SQL("COPY {stage} ({key}, score{label}) FROM STDIN (FORMAT binary)").format(
        stage=_ident(plan.staging_table), key=sql.Identifier(spec.source.entity_key),
        label=sql.SQL(", label" if "label" in columns else ""))
    query = feature_copy_sql(spec, types, plan.date, shard, plan.shards)
    names = spec.feature_names
    scored = 0
    reject_keys: list[np.ndarray] = []
    reject_errors: list[list[InputError]] = []
    write_cur = write_conn.cursor()
    # Three things overlap: psql + a reader thread fetch and parse the next block, this thread encodes and
    # scores (numpy/XGBoost release the GIL), and the queued writer's thread sends predictions to the server.
    with copy_out(read_conn, query) as source, \
            write_cur.copy(copy_in, writer=_BoundedQueuedWriter(write_cur)) as sink:
        sink.write(HEADER)
        blocks = read_fixed_rows(source, len(names), chunk_rows)
        for block in _prefetch(blocks):
            encoded = encode_columns(spec, {name: block[f"v{j}"] for j, name in enumerate(names)}, reject=True)
            keys = block["key"]
            if encoded.n_rejected:
                reject_keys.append(keys[~encoded.valid].astype(np.int64))
                reject_errors.append(encoded.rejects)
                keys = keys[encoded.valid]
            predictions = scorer.predict_matrix(encoded.matrix)
            sink.write(prediction_rows(keys, predictions.scores, predictions.labels))
            if scored == 0:
                _fault_sleep()
            scored += len(keys)
        sink.write(TRAILER)
    return scored, reject_keys, reject_errors


def _json_value(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and value != value:
        return None
    return value


def _explain_rejects(read_conn: psycopg.Connection, spec: ModelSpec, day: dt.date, keys: np.ndarray,
                     fallback: dict[int, InputError]) -> Iterator[tuple[int, str | None, str, dict[str, Any]]]:
    """(key, column, reason, raw row) per rejected key: the raw row is re-read and re-validated, so the reason
    names the real value (e.g. the unknown category string) rather than its fast-path code."""
    src = spec.source
    query = sql.SQL("SELECT * FROM {t} WHERE {d} = %s AND {k} = ANY(%s)").format(
        t=_ident(src.table), d=sql.Identifier(src.date_column), k=sql.Identifier(src.entity_key))
    for start in range(0, len(keys), _REJECT_FETCH):
        batch = [int(k) for k in keys[start:start + _REJECT_FETCH]]
        with read_conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            rows = cur.execute(query, (day, batch)).fetchall()
        read_conn.commit()
        by_key = {int(r[src.entity_key]): {k: _json_value(v) for k, v in r.items()} for r in rows}
        raw = [by_key.get(k, {}) for k in batch]
        exact: dict[int, InputError] = {}
        try:
            columns = records_to_columns([{n: r.get(n) for n in spec.feature_names} for r in raw])
            for error in encode_columns(spec, columns, reject=True).rejects:
                exact[batch[error.row]] = error
        except InputError:  # the raw re-read could not be re-encoded as a whole: keep the fast-path reasons
            pass
        for key, row in zip(batch, raw, strict=True):
            error = exact.get(key) or fallback[key]
            reason = str(error).split(": ", 1)[1] if str(error).startswith("row ") else str(error)
            yield key, error.column, f"{error.kind}: {reason}", row


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
    _idle(write_conn)
    with write_conn.transaction():
        # Lock the shard's bookkeeping row key so that two attempts of the same shard cannot both load.
        write_conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (plan.batch_run_id, shard))
        done = write_conn.execute("SELECT 1 FROM ops.batch_shards WHERE batch_run_id = %s AND shard = %s",
                                  (plan.batch_run_id, shard)).fetchone()
        if done:
            return ShardResult(shard, 0, 0, 0.0, skipped=True)
        scored, reject_keys, reject_errors = _stream_scores(read_conn, write_conn, scorer, plan, shard, types,
                                                            chunk_rows or spec.batch.chunk_rows)
        read_conn.commit()
        rejected = sum(len(k) for k in reject_keys)
        if rejected:
            keys = np.concatenate(reject_keys)
            fallback = {int(k): e for ks, es in zip(reject_keys, reject_errors, strict=True)
                        for k, e in zip(ks, es, strict=True)}
            with write_conn.cursor().copy(
                    "COPY ops.prediction_rejects (model_name, prediction_date, run_id, entity_id, column_name, "
                    "reason, row_data) FROM STDIN") as copy:
                for key, column, reason, row in _explain_rejects(read_conn, spec, plan.date, keys, fallback):
                    copy.write_row((spec.name, plan.date, plan.run_id, str(key), column, reason, Jsonb(row)))
        duration = time.perf_counter() - started
        write_conn.execute("INSERT INTO ops.batch_shards (batch_run_id, shard, rows_scored, rows_rejected, "
                           "duration_s) VALUES (%s, %s, %s, %s, %s)",
                           (plan.batch_run_id, shard, scored, rejected, duration))
    log.info("model %s date %s shard %d/%d: %d rows scored, %d rejected in %.2fs", spec.name, plan.day, shard,
             plan.shards, scored, rejected, duration)
    return ShardResult(shard, scored, rejected, duration)


def fail_run(conn: psycopg.Connection, plan: BatchPlan, error: str, *, drop_staging: bool = True) -> None:
    """Mark the run failed with its reason; the previous predictions for the date stay as they are."""
    _idle(conn)
    with conn.transaction():
        conn.execute("UPDATE ops.batch_runs SET status = 'failed', error = %s, finished_at = now(), "
                     "duration_s = extract(epoch FROM now() - started_at) WHERE id = %s",
                     (error[:4000], plan.batch_run_id))
        if drop_staging:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(plan.staging_table)))


def swap(conn: psycopg.Connection, spec: ModelSpec, plan: BatchPlan) -> RunResult:
    """Check the run's totals, then make the staging table the date's partition in one transaction."""
    status, scored, rejected, duration = conn.execute(
        "SELECT status, rows_scored, rows_rejected, duration_s FROM ops.batch_runs WHERE id = %s",
        (plan.batch_run_id,)).fetchone()
    conn.commit()
    if status == "success":  # swapped already (a cleared/retried task): nothing to do twice
        return RunResult(plan, scored, rejected, float(duration or 0))
    shards_done, scored, rejected = conn.execute(
        "SELECT count(*), coalesce(sum(rows_scored), 0)::bigint, coalesce(sum(rows_rejected), 0)::bigint "
        "FROM ops.batch_shards "
        "WHERE batch_run_id = %s", (plan.batch_run_id,)).fetchone()
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

    schema, table = split_table(spec.prediction_table)
    stage = _ident(plan.staging_table)
    final = partition_name(spec.prediction_table, plan.date)
    key = sql.Identifier(spec.source.entity_key)
    # Index and date check are built before the swap transaction, so the swap itself only touches catalogs:
    # ATTACH skips its validation scan when a CHECK constraint already proves the partition bound.
    with conn.transaction():
        conn.execute(sql.SQL("ALTER TABLE {stage} ADD CONSTRAINT {chk} CHECK (prediction_date IS NOT NULL "
                             "AND prediction_date = {day})").format(
            stage=stage, chk=sql.Identifier(f"{table}_stage_day"), day=sql.Literal(plan.date)))
        conn.execute(sql.SQL("ALTER TABLE {stage} ADD PRIMARY KEY (prediction_date, {key})").format(
            stage=stage, key=key))
    with conn.transaction():
        # Fail rather than queue forever behind a long reader of the parent table (DETACH needs a brief
        # exclusive lock on it); the staging table stays, so a retry of this step can still swap.
        conn.execute("SET LOCAL lock_timeout = '60s'")
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_lock_key(spec, plan.date),))
        old = conn.execute("SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                           "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                           (schema, final)).fetchone()
        parent = _ident(spec.prediction_table)
        if old:
            conn.execute(sql.SQL("ALTER TABLE {parent} DETACH PARTITION {old}").format(
                parent=parent, old=sql.Identifier(schema, final)))
            conn.execute(sql.SQL("DROP TABLE {old}").format(old=sql.Identifier(schema, final)))
        conn.execute(sql.SQL("ALTER TABLE {stage} RENAME TO {final}").format(stage=stage,
                                                                             final=sql.Identifier(final)))
        staged = sql.Identifier(schema, final)
        conn.execute(sql.SQL("ALTER INDEX {idx} RENAME TO {new}").format(
            idx=sql.Identifier(schema, f"{split_table(plan.staging_table)[1]}_pkey"),
            new=sql.Identifier(f"{final}_pkey")))
        conn.execute(sql.SQL("ALTER TABLE {t} ALTER prediction_date DROP DEFAULT, ALTER model_name DROP DEFAULT, "
                             "ALTER model_version DROP DEFAULT, ALTER run_id DROP DEFAULT, "
                             "ALTER scored_at DROP DEFAULT").format(t=staged))
        conn.execute(sql.SQL("ALTER TABLE {parent} ATTACH PARTITION {t} FOR VALUES IN ({day})").format(
            parent=parent, t=staged, day=sql.Literal(plan.date)))
        conn.execute(sql.SQL("ALTER TABLE {t} DROP CONSTRAINT {chk}").format(
            t=staged, chk=sql.Identifier(f"{table}_stage_day")))
        duration = conn.execute(
            "UPDATE ops.batch_runs SET status = 'success', error = NULL, rows_scored = %s, rows_rejected = %s, "
            "finished_at = now(), duration_s = extract(epoch FROM now() - started_at) WHERE id = %s "
            "RETURNING duration_s", (scored, rejected, plan.batch_run_id)).fetchone()[0]
    log.info("model %s date %s: swapped in %d predictions (version %s, run %s, %d rejected)",
             spec.name, plan.day, scored, plan.version, plan.run_id, rejected)
    return RunResult(plan, scored, rejected, float(duration))


def swap_or_fail(conn: psycopg.Connection, spec: ModelSpec, plan: BatchPlan) -> RunResult:
    """`swap`, recording any failure on the run (a reject-threshold failure records itself)."""
    try:
        return swap(conn, spec, plan)
    except RejectThresholdError:
        raise
    except Exception as exc:
        conn.rollback()
        fail_run(conn, plan, f"swap: {type(exc).__name__}: {exc}", drop_staging=False)
        raise


def drop_expired(conn: psycopg.Connection, spec: ModelSpec, today: dt.date) -> list[str]:
    """Drop the prediction table's day partitions older than spec.batch.retention_days before `today`."""
    schema, table = split_table(spec.prediction_table)
    cutoff = today - dt.timedelta(days=spec.batch.retention_days)
    children = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE n.nspname = %s AND p.relname = %s", (schema, table)).fetchall()
    _idle(conn)
    dropped = []
    prefix = f"{table}_p"
    for (name,) in children:
        suffix = name[len(prefix):] if name.startswith(prefix) else ""
        try:
            day = dt.datetime.strptime(suffix, "%Y%m%d").date()
        except ValueError:
            continue  # not one of ours: leave it alone
        if day < cutoff:
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, name)))
            dropped.append(f"{schema}.{name}")
    conn.commit()
    if dropped:
        log.info("model %s: dropped %d partitions older than %s: %s", spec.name, len(dropped), cutoff, dropped)
    return dropped


# ---------------------------------------------------------------------------------------------- one process

def run_batch(spec: ModelSpec, day: dt.date, run_id: str, *, version: str | None = None, url: str | None = None,
              scorer: Scorer | None = None, shards: int | None = None, chunk_rows: int | None = None) -> RunResult:
    """The whole run in this process (CLI, bench, tests): the same steps the DAG runs as separate tasks."""
    from scoring.db import connect
    from scoring.registry import CHAMPION, resolve_version

    with connect(url) as conn, connect(url) as read_conn:
        check_features(conn, spec, day)
        if scorer is None:
            scorer = Scorer.from_registry(spec, resolve_version(spec.name, version or CHAMPION))
        plan = prepare(conn, spec, day, run_id, scorer.version, shards)
        try:
            for shard in range(plan.shards):
                score_shard(read_conn, conn, scorer, plan, shard, chunk_rows)
        except Exception as exc:
            conn.rollback()
            fail_run(conn, plan, f"{type(exc).__name__}: {exc}")
            raise
        return swap_or_fail(conn, spec, plan)


def main(argv: list[str] | None = None) -> int:
    from scoring.spec import load_spec

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
    try:
        result = run_batch(load_spec(args.model), args.date, run_id, version=args.version, shards=args.shards,
                           chunk_rows=args.chunk_rows)
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"model": args.model, "date": str(args.date), "version": result.plan.version,
                      "rows_scored": result.rows_scored, "rows_rejected": result.rows_rejected,
                      "duration_s": round(result.duration_s, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
