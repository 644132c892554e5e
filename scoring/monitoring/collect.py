"""What the monitor reads from PostgreSQL, aggregated there (or streamed into numpy), never looped over in Python.

* the day's feature histograms on the reference bins: ONE scan of the day's feature partition, every feature
  binned in SQL (`width_bucket` over the reference edges, a CASE for categories) and counted with GROUPING SETS;
* the day's (and the previous day's) score histograms from the prediction table, the same way;
* the same histograms of the day's logged online traffic (ops.online_payloads, written by serving/payload_log.py);
* the day's batch run (version, rows scored and rejected) from ops.batch_runs;
* (score, label) pairs for the realised metric, streamed with binary COPY into numpy arrays.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from scoring.monitoring.profile import Histogram, ReferenceProfile
from scoring.pgcopy import copy_out, read_fixed_rows
from scoring.spec import Feature, ModelSpec
from scoring.store import split_table


def _table(qualified: str) -> sql.Identifier:
    return sql.Identifier(*split_table(qualified))


def _edges_literal(edges: list[float]) -> sql.Composable:
    return sql.SQL("ARRAY[{}]::float8[]").format(sql.SQL(", ").join(sql.Literal(float(e)) for e in edges))


def _bucket_expr(feature: Feature, reference: Histogram, value: sql.Composable) -> sql.Composable:
    """The bin index of a feature `value` (an SQL expression) in SQL, NULL for a missing value, matching
    profile.Histogram's bins."""
    if reference.kind == "category":
        whens = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(sql.Literal(c), sql.Literal(i))
                                  for i, c in enumerate(reference.bins))
        return sql.SQL("CASE WHEN {v} IS NULL THEN NULL ELSE CASE {v}::text {whens} ELSE {other} END END"
                       ).format(v=value, whens=whens, other=sql.Literal(len(reference.bins)))
    if not reference.bins:  # a single bin: only missing or not
        return sql.SQL("CASE WHEN {v} IS NULL THEN NULL ELSE 0 END").format(v=value)
    # width_bucket(x, edges) is the number of edges <= x: the bins [e_i, e_i+1) with open outer bins
    return sql.SQL("width_bucket({v}::float8, {edges})").format(v=value, edges=_edges_literal(reference.bins))


def _histograms(conn: psycopg.Connection, features: list[Feature], reference: ReferenceProfile,
                rows: sql.Composable, value_of) -> dict[str, Histogram]:
    """Histograms of `features` over `rows` (a FROM ... WHERE ... clause) on the reference bins, in one scan:
    every feature binned in SQL and counted with GROUPING SETS. `value_of(feature)` is its SQL value."""
    if not features:
        return {}
    names = [sql.Identifier(f"b{i}") for i in range(len(features))]
    inner = sql.SQL("SELECT {exprs} {rows}").format(
        exprs=sql.SQL(", ").join(sql.SQL("{} AS {}").format(
            _bucket_expr(f, reference.features[f.name], value_of(f)), n) for f, n in zip(features, names,
                                                                                        strict=True)),
        rows=rows)
    which = sql.SQL("CASE {} END").format(sql.SQL(" ").join(
        sql.SQL("WHEN GROUPING({}) = 0 THEN {}").format(n, sql.Literal(i)) for i, n in enumerate(names)))
    query = sql.SQL("SELECT {which}, COALESCE({names}), count(*) FROM ({inner}) s "
                    "GROUP BY GROUPING SETS ({sets})").format(
        which=which, names=sql.SQL(", ").join(names), inner=inner,
        sets=sql.SQL(", ").join(sql.SQL("({})").format(n) for n in names))
    found = conn.execute(query).fetchall()
    conn.commit()
    out = {}
    for i, feature in enumerate(features):
        ref = reference.features[feature.name]
        counts = [0] * len(ref.counts)
        nulls = 0
        for index, bucket, count in found:
            if index != i:
                continue
            if bucket is None:
                nulls = int(count)
            else:
                counts[int(bucket)] = int(count)
        if sum(counts) or nulls:
            out[feature.name] = Histogram(ref.kind, list(ref.bins), counts, nulls)
    return out


def feature_histograms(conn: psycopg.Connection, spec: ModelSpec, day: dt.date,
                       reference: ReferenceProfile) -> dict[str, Histogram]:
    """Histograms of the day's raw feature rows on the reference bins, in one scan of the day's partition."""
    rows = sql.SQL("FROM {table} WHERE {date} = {day}").format(
        table=_table(spec.source.table), date=sql.Identifier(spec.source.date_column), day=sql.Literal(day))
    return _histograms(conn, [f for f in spec.features if f.name in reference.features], reference, rows,
                       lambda f: sql.Identifier(f.name))


def online_feature_histograms(conn: psycopg.Connection, spec: ModelSpec, day: dt.date,
                              reference: ReferenceProfile) -> dict[str, Histogram]:
    """Histograms of the day's logged online rows (ops.online_payloads, serving/payload_log.py) on the
    reference bins, in one scan of the day's partition; {} when nothing was logged."""
    rows = sql.SQL("FROM ops.online_payloads WHERE model_name = {model} AND log_date = {day}").format(
        model=sql.Literal(spec.name), day=sql.Literal(day))
    return _histograms(conn, [f for f in spec.features if f.name in reference.features], reference, rows,
                       lambda f: sql.SQL("(features ->> {})").format(sql.Literal(f.name)))


@dataclass(frozen=True)
class ScoreSummary:
    histogram: Histogram
    mean: float
    rows: int


def score_summary(conn: psycopg.Connection, table: str, day: dt.date, edges: list[float]) -> ScoreSummary | None:
    """The day's scores in `table` binned on `edges` (one aggregate query); None when the day has no rows."""
    return _score_summary(conn, sql.SQL("FROM {t} WHERE prediction_date = {day}").format(
        t=_table(table), day=sql.Literal(day)), edges)


def online_score_summary(conn: psycopg.Connection, model: str, day: dt.date, version: int,
                         edges: list[float]) -> ScoreSummary | None:
    """The scores `version` gave the day's logged online rows, binned on `edges`; None when there are none."""
    return _score_summary(conn, sql.SQL("FROM ops.online_payloads WHERE model_name = {m} AND log_date = {day} "
                                        "AND model_version = {v}").format(m=sql.Literal(model), day=sql.Literal(day),
                                                                          v=sql.Literal(version)), edges)


def _score_summary(conn: psycopg.Connection, rows: sql.Composable, edges: list[float]) -> ScoreSummary | None:
    bucket = (sql.SQL("width_bucket(score, {})").format(_edges_literal(edges)) if edges else sql.SQL("0"))
    found = conn.execute(sql.SQL("SELECT {b} AS b, count(*), sum(score) {rows} GROUP BY 1").format(
        b=bucket, rows=rows)).fetchall()
    conn.commit()
    if not found:
        return None
    counts = [0] * (len(edges) + 1)
    total = 0.0
    for b, count, sum_score in found:
        counts[int(b)] = int(count)
        total += float(sum_score)
    n = sum(counts)
    return ScoreSummary(Histogram("numeric", list(edges), counts), total / n, n)


@dataclass(frozen=True)
class DayRun:
    """The latest successful batch run of a (model, date)."""

    day: dt.date
    version: int
    run_id: str
    rows_scored: int
    rows_rejected: int

    @property
    def rows_in(self) -> int:
        return self.rows_scored + self.rows_rejected

    @property
    def reject_rate(self) -> float:
        return self.rows_rejected / self.rows_in if self.rows_in else 0.0


def _day_run(conn: psycopg.Connection, model: str, where: sql.Composable, params: tuple) -> DayRun | None:
    row = conn.execute(sql.SQL(
        "SELECT prediction_date, model_version, run_id, rows_scored, rows_rejected FROM ops.batch_runs "
        "WHERE model_name = %s AND status = 'success' AND {} ORDER BY prediction_date DESC, finished_at DESC "
        "LIMIT 1").format(where), (model, *params)).fetchone()
    conn.commit()
    return DayRun(row[0], int(row[1]), row[2], int(row[3]), int(row[4])) if row else None


def day_run(conn: psycopg.Connection, model: str, day: dt.date) -> DayRun | None:
    return _day_run(conn, model, sql.SQL("prediction_date = %s"), (day,))


def previous_run(conn: psycopg.Connection, model: str, day: dt.date) -> DayRun | None:
    """The latest successful run of an earlier date (the day before, or the last day that was predicted)."""
    return _day_run(conn, model, sql.SQL("prediction_date < %s"), (day,))


def scores_and_labels(conn: psycopg.Connection, spec: ModelSpec, table: str,
                      day: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """(score, label) of every prediction of `day` whose label has arrived in the feature table, as arrays
    (binary COPY into numpy: a million pairs in well under a second)."""
    src = spec.source
    key = sql.Identifier(src.entity_key)
    query = sql.SQL(
        "COPY (SELECT p.{key}::bigint, p.score::float8, f.{label}::float8 FROM {pred} p JOIN {feat} f "
        "ON f.{date} = p.prediction_date AND f.{key} = p.{key} "
        "WHERE p.prediction_date = {day} AND f.{date} = {day} AND f.{label} IS NOT NULL) TO STDOUT (FORMAT binary)"
    ).format(key=key, label=sql.Identifier(spec.label), pred=_table(table), feat=_table(src.table),
             date=sql.Identifier(src.date_column), day=sql.Literal(day))
    scores, labels = [], []
    with copy_out(conn, query) as stream:
        for block in read_fixed_rows(stream, 2, 500_000):
            scores.append(block["v0"].astype(np.float64))
            labels.append(block["v1"].astype(np.float64))
    conn.commit()
    if not scores:
        return np.empty(0), np.empty(0)
    return np.concatenate(scores), np.concatenate(labels)


def predicted_days(conn: psycopg.Connection, model: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """Dates in [start, end] with a successful batch run."""
    rows = conn.execute("SELECT DISTINCT prediction_date FROM ops.batch_runs WHERE model_name = %s "
                        "AND status = 'success' AND prediction_date BETWEEN %s AND %s ORDER BY 1",
                        (model, start, end)).fetchall()
    conn.commit()
    return [r[0] for r in rows]
