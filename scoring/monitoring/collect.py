"""What the monitor reads from PostgreSQL, aggregated there (or streamed into numpy), never looped over in Python.

* the day's feature histograms on the reference bins: ONE scan of the day's feature partition, every feature
  binned in SQL (`width_bucket` over the reference edges, a CASE for categories) and counted with GROUPING SETS;
* the day's (and the previous day's) score histograms from the prediction table, the same way;
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


def _bucket_expr(feature: Feature, reference: Histogram) -> sql.Composable:
    """The bin index of a feature value in SQL (NULL for a missing value), matching profile.Histogram's bins."""
    col = sql.Identifier(feature.name)
    if reference.kind == "category":
        whens = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(sql.Literal(c), sql.Literal(i))
                                  for i, c in enumerate(reference.bins))
        return sql.SQL("CASE WHEN {col} IS NULL THEN NULL ELSE CASE {col}::text {whens} ELSE {other} END END"
                       ).format(col=col, whens=whens, other=sql.Literal(len(reference.bins)))
    if not reference.bins:  # a single bin: only missing or not
        return sql.SQL("CASE WHEN {col} IS NULL THEN NULL ELSE 0 END").format(col=col)
    # width_bucket(x, edges) is the number of edges <= x: the bins [e_i, e_i+1) with open outer bins
    return sql.SQL("width_bucket({col}::float8, {edges})").format(col=col, edges=_edges_literal(reference.bins))


def feature_histograms(conn: psycopg.Connection, spec: ModelSpec, day: dt.date,
                       reference: ReferenceProfile) -> dict[str, Histogram]:
    """Histograms of the day's raw feature rows on the reference bins, in one scan of the day's partition."""
    features = [f for f in spec.features if f.name in reference.features]
    if not features:
        return {}
    names = [sql.Identifier(f"b{i}") for i in range(len(features))]
    inner = sql.SQL("SELECT {exprs} FROM {table} WHERE {date} = {day}").format(
        exprs=sql.SQL(", ").join(sql.SQL("{} AS {}").format(_bucket_expr(f, reference.features[f.name]), n)
                                 for f, n in zip(features, names, strict=True)),
        table=_table(spec.source.table), date=sql.Identifier(spec.source.date_column), day=sql.Literal(day))
    which = sql.SQL("CASE {} END").format(sql.SQL(" ").join(
        sql.SQL("WHEN GROUPING({}) = 0 THEN {}").format(n, sql.Literal(i)) for i, n in enumerate(names)))
    query = sql.SQL("SELECT {which}, COALESCE({names}), count(*) FROM ({inner}) s "
                    "GROUP BY GROUPING SETS ({sets})").format(
        which=which, names=sql.SQL(", ").join(names), inner=inner,
        sets=sql.SQL(", ").join(sql.SQL("({})").format(n) for n in names))
    rows = conn.execute(query).fetchall()
    conn.commit()
    out = {}
    for i, feature in enumerate(features):
        ref = reference.features[feature.name]
        counts = [0] * len(ref.counts)
        nulls = 0
        for index, bucket, count in rows:
            if index != i:
                continue
            if bucket is None:
                nulls = int(count)
            else:
                counts[int(bucket)] = int(count)
        out[feature.name] = Histogram(ref.kind, list(ref.bins), counts, nulls)
    return out


@dataclass(frozen=True)
class ScoreSummary:
    histogram: Histogram
    mean: float
    rows: int


def score_summary(conn: psycopg.Connection, table: str, day: dt.date, edges: list[float]) -> ScoreSummary | None:
    """The day's scores in `table` binned on `edges` (one aggregate query); None when the day has no rows."""
    bucket = (sql.SQL("width_bucket(score, {})").format(_edges_literal(edges)) if edges else sql.SQL("0"))
    rows = conn.execute(sql.SQL("SELECT {b} AS b, count(*), sum(score) FROM {t} WHERE prediction_date = %s "
                                "GROUP BY 1").format(b=bucket, t=_table(table)), (day,)).fetchall()
    conn.commit()
    if not rows:
        return None
    counts = [0] * (len(edges) + 1)
    total = 0.0
    for b, count, sum_score in rows:
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
