"""The streaming pipeline of one batch shard: features COPY out -> validate + encode -> score -> predictions COPY
into the staging table, and the rejected rows re-read and kept with their exact reason.

The date's features stream out with binary COPY as fixed-width float8 rows (categories are sent as their spec
code, NULL as NaN, an unknown category as -1), are parsed per block with numpy, validated and encoded by
`encode_columns(reject=True)`, scored by the shared `Scorer`, and stream into the staging table with binary COPY.
Memory is bounded by the chunk size, not the day size. Three things overlap: psql + a reader thread fetch and
parse the next block, the calling thread encodes and scores (numpy/XGBoost release the GIL), and a queued writer's
thread sends predictions to the server.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from psycopg.types.json import Jsonb

from scoring import batch_sql
from scoring.encoding import InputError, encode_columns, records_to_columns
from scoring.pgcopy import HEADER, TRAILER, copy_out, prediction_rows, read_fixed_rows
from scoring.reasons import ReasonSpool
from scoring.scorer import Scorer
from scoring.spec import ModelSpec

REJECT_FETCH = 5_000  # raw rows re-read per query when explaining rejects


def prefetch(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
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


class BoundedQueuedWriter(QueuedLibpqWriter):
    """psycopg's queued COPY writer with a short queue: its default 1,024 slots of up to 128 kB would let
    memory grow by ~128 MB whenever the server is slower than scoring; a short queue makes scoring wait."""

    def __init__(self, cursor: psycopg.Cursor, slots: int = 32) -> None:
        super().__init__(cursor)
        self._queue = queue.Queue(maxsize=slots)


@dataclass
class Streamed:
    """What one shard's stream gave: rows scored and, per chunk, the keys and first errors of rejected rows."""

    scored: int = 0
    explained: int = 0  # rows whose reasons were staged (batch.explain)
    reject_keys: list[np.ndarray] = field(default_factory=list)
    reject_errors: list[list[InputError]] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return sum(len(k) for k in self.reject_keys)


def stream_scores(read_conn: psycopg.Connection, write_conn: psycopg.Connection, scorer: Scorer,
                  features_query: sql.Composable, stage: str, chunk_rows: int,
                  reasons_stage: str | None = None) -> Streamed:
    """COPY features out -> encode -> score -> COPY predictions into `stage` (inside write_conn's transaction);
    with `reasons_stage` (the spec's batch.explain), the explained rows' top-k contributions follow into it."""
    spec = scorer.spec
    spool = ReasonSpool(scorer, spec.batch.explain) if reasons_stage and spec.batch.explain else None
    try:
        out = _stream(read_conn, write_conn, scorer, features_query, stage, chunk_rows, spool)
        if spool is not None:
            with write_conn.cursor().copy(batch_sql.reasons_copy_sql(spec, reasons_stage)) as sink:
                for block in spool.blocks():
                    sink.write(block)
            out.explained = spool.explained
    finally:
        if spool is not None:
            spool.close()
    return out


def _stream(read_conn: psycopg.Connection, write_conn: psycopg.Connection, scorer: Scorer,
            features_query: sql.Composable, stage: str, chunk_rows: int, spool: ReasonSpool | None) -> Streamed:
    spec = scorer.spec
    names = spec.feature_names
    out = Streamed()
    write_cur = write_conn.cursor()
    with copy_out(read_conn, features_query) as source, \
            write_cur.copy(batch_sql.prediction_copy_sql(spec, stage), writer=BoundedQueuedWriter(write_cur)) as sink:
        sink.write(HEADER)
        for block in prefetch(read_fixed_rows(source, len(names), chunk_rows)):
            encoded = encode_columns(spec, {name: block[f"v{j}"] for j, name in enumerate(names)}, reject=True)
            keys = block["key"]
            if encoded.n_rejected:
                out.reject_keys.append(keys[~encoded.valid].astype(np.int64))
                out.reject_errors.append(encoded.rejects)
                keys = keys[encoded.valid]
            predictions = scorer.predict_matrix(encoded.matrix)
            sink.write(prediction_rows(keys, predictions.scores, predictions.labels))
            if spool is not None:
                spool.add(keys, predictions.scores, encoded.matrix)
            out.scored += len(keys)
        sink.write(TRAILER)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and value != value:
        return None
    return value


def explain_rejects(read_conn: psycopg.Connection, spec: ModelSpec, day: dt.date, keys: np.ndarray,
                    fallback: dict[int, InputError]) -> Iterator[tuple[int, str | None, str, dict[str, Any]]]:
    """(key, column, reason, raw row) per rejected key: the raw row is re-read and re-validated, so the reason
    names the real value (e.g. the unknown category string) rather than its fast-path code."""
    query = batch_sql.raw_rows_sql(spec)
    for start in range(0, len(keys), REJECT_FETCH):
        batch = [int(k) for k in keys[start:start + REJECT_FETCH]]
        with read_conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            rows = cur.execute(query, (day, batch)).fetchall()
        read_conn.commit()
        by_key = {int(r[spec.source.entity_key]): {k: _json_value(v) for k, v in r.items()} for r in rows}
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


def keep_rejects(read_conn: psycopg.Connection, write_conn: psycopg.Connection, spec: ModelSpec, day: dt.date,
                 run_id: str, streamed: Streamed) -> None:
    """COPY the stream's rejected rows, with reason and raw row, into ops.prediction_rejects (in write_conn's
    transaction)."""
    if not streamed.reject_keys:
        return
    keys = np.concatenate(streamed.reject_keys)
    fallback = {int(k): e for ks, es in zip(streamed.reject_keys, streamed.reject_errors, strict=True)
                for k, e in zip(ks, es, strict=True)}
    with write_conn.cursor().copy(
            "COPY ops.prediction_rejects (model_name, prediction_date, run_id, entity_id, column_name, "
            "reason, row_data) FROM STDIN") as copy:
        for key, column, reason, row in explain_rejects(read_conn, spec, day, keys, fallback):
            copy.write_row((spec.name, day, run_id, str(key), column, reason, Jsonb(row)))
