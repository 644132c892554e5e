"""Precomputed predictions of one model: primary-key lookups in the spec's prediction table, on the shared pool.

The date served by default is the latest *complete* one: the max prediction_date of a successful batch run in
ops.batch_runs (never a half-loaded day). It is cached for a few seconds so that a lookup is one query.

The single-entity lookup is the hottest route, so PostgreSQL renders its JSON document (`json_build_object`) and
the statement runs through libpq directly (prepared once per connection): one round trip, one text value, no
per-column conversion in Python. Measured in-process: ~70 µs less client CPU per lookup than a psycopg cursor
with row conversion and json.dumps.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.errors import error_from_result

from scoring.spec import ModelSpec
from scoring.store import reasons_table
from serving.db_pool import ServingPool


@dataclass(frozen=True)
class Precomputed:
    entity_id: int
    prediction_date: dt.date
    score: float
    label: int | None
    model_version: int
    run_id: str
    scored_at: dt.datetime


class LookupQueries:
    def __init__(self, spec: ModelSpec, pool: ServingPool, *, latest_ttl_s: float = 2.0) -> None:
        self.spec = spec
        self.pool = pool
        self.latest_ttl_s = latest_ttl_s
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
        # The nightly reasons of an entity (models.yaml batch.explain), in rank order (largest |contribution| first)
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
            rows = self.pool.run(self._latest_q, (self.spec.name,))
            day = rows[0][0] if rows else None
            self._latest = (day, time.monotonic())
            return day

    def latest_features(self, entity_id: int) -> tuple[dt.date, dict[str, Any]] | None:
        """The entity's feature values on the latest feature date (None when it has no row that day)."""
        cached = self._feature_day
        if cached is None or time.monotonic() - cached[1] >= self.latest_ttl_s:
            rows = self.pool.run(self._feature_day_q, ())
            cached = self._feature_day = (rows[0][0] if rows else None, time.monotonic())
        if cached[0] is None:
            return None
        rows = self.pool.run(self._features_q, (cached[0], entity_id))
        if not rows:
            return None
        return rows[0][0], dict(zip(self.spec.feature_names, rows[0][1:], strict=True))

    def get_many(self, entity_ids: list[int], day: dt.date) -> dict[int, Precomputed]:
        rows = self.pool.run(self._by_key, (day, entity_ids))
        return {int(r[0]): Precomputed(int(r[0]), r[1], float(r[2]), None if r[3] is None else int(r[3]),
                                       int(r[4]), r[5], r[6]) for r in rows}

    def reasons(self, entity_id: int, day: dt.date) -> list[dict[str, Any]]:
        """The entity's stored top-k contributions on `day`, rank order (empty when the run stored none)."""
        return [{"feature": f, "value": v, "contribution": float(c)}
                for f, v, c in self.pool.run(self._reasons_q, (day, entity_id))]

    def document(self, entity_id: int, day: dt.date) -> bytes | None:
        """The lookup's JSON document for the entity on `day` (None when there is no prediction)."""
        with self.pool.connection() as conn:
            return _prepared_value(conn.pgconn, b"serving_lookup_document", self._document_q,
                                   [day.isoformat().encode(), str(entity_id).encode()])


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
