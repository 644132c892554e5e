"""Attribution drift: per feature, the day's mean |contribution| against the reference (training) window's.

A feature whose influence on the scores changes is caught even when its own distribution does not move (a
correlated feature changed, or the population moved into a region where the trees weigh it differently).

Both sides are a deterministic sample of rows (the same customers every day: a hash of the entity key, plus the
date in the window) scored with exact TreeSHAP by the day's model version, through the shared scorer. The check
`attribution.<feature>` is |today - reference| / max(reference, 1% of the reference's total): relative to the
feature's own influence, floored so that a feature the model barely uses cannot alarm on noise.
`attribution_mean_abs.<feature>` keeps today's mean (info), so the ops table and MLflow hold the series.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from scoring.monitoring.checks import CheckResult, judge
from scoring.scorer import Scorer
from scoring.spec import ModelSpec
from scoring.store import split_table

SAMPLE_ROWS = 2_000  # per side: exact TreeSHAP of 4,000 rows is ~2 s on one core
FLOOR_SHARE = 0.01
_WINDOW = re.compile(r"\[(\d{4}-\d{2}-\d{2}), (\d{4}-\d{2}-\d{2})\)")


@dataclass
class Attribution:
    """Mean |contribution| per feature (spec order) on the reference window and on the day."""

    features: list[str]
    reference: np.ndarray
    today: np.ndarray

    def changes(self) -> np.ndarray:
        floor = FLOOR_SHARE * float(self.reference.sum())
        return np.abs(self.today - self.reference) / np.maximum(self.reference, floor)


def window_bounds(window: str) -> tuple[dt.date, dt.date]:
    """'[2026-10-04, 2026-11-01) with holdout from ...' (a reference profile's window) -> (start, end)."""
    found = _WINDOW.search(window)
    if found is None:
        raise ValueError(f"not a training window: {window!r}")
    return dt.date.fromisoformat(found[1]), dt.date.fromisoformat(found[2])


def sample_rows(conn: psycopg.Connection, spec: ModelSpec, start: dt.date, end: dt.date,
                limit: int = SAMPLE_ROWS) -> pd.DataFrame:
    """Up to `limit` feature rows with date in [start, end), the same entities on every call (hash order)."""
    src = spec.source
    key, date = sql.Identifier(src.entity_key), sql.Identifier(src.date_column)
    query = sql.SQL("SELECT {cols} FROM {table} WHERE {date} >= %s AND {date} < %s "
                    "ORDER BY hashtext({key}::text || {date}::text), {key}, {date} LIMIT %s").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, spec.feature_names)),
        table=sql.Identifier(*split_table(src.table)), date=date, key=key)
    rows = conn.execute(query, (start, end, limit)).fetchall()
    conn.commit()
    return pd.DataFrame(rows, columns=spec.feature_names)


def mean_abs_contributions(scorer: Scorer, rows: pd.DataFrame) -> np.ndarray:
    encoded = scorer.encode(rows.astype(object).where(rows.notna(), None), reject=True)
    return np.abs(scorer.contributions(encoded.matrix).values.astype(np.float64)).mean(axis=0)


def measure(conn: psycopg.Connection, scorer: Scorer, day: dt.date, window: str) -> Attribution:
    start, end = window_bounds(window)
    spec = scorer.spec
    reference = mean_abs_contributions(scorer, sample_rows(conn, spec, start, end))
    today = mean_abs_contributions(scorer, sample_rows(conn, spec, day, day + dt.timedelta(days=1)))
    return Attribution(spec.feature_names, reference, today)


def attribution_checks(spec: ModelSpec, found: Attribution) -> list[CheckResult]:
    out = []
    for name, ref, today, change in zip(found.features, found.reference, found.today, found.changes(),
                                        strict=True):
        detail = f"mean |contribution| {today:.4g} today, {ref:.4g} in the training window"
        out.append(judge(f"attribution.{name}", float(change), spec.monitoring.attribution_drift, detail))
        out.append(judge(f"attribution_mean_abs.{name}", float(today), None, f"reference {ref:.4g}"))
    return out
