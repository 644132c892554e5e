"""The example queries in sql/queries/ run against the demo prediction tables and answer something."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from scoring import batch
from scoring.db import connect

QUERIES = Path(__file__).resolve().parent.parent / "sql" / "queries"


@pytest.fixture(scope="module")
def published(db_url, trained_models, demo_features, specs):
    """Two published days for churn and one for spend (the nightly job's output)."""
    days = [demo_features - dt.timedelta(days=1), demo_features]
    for day in days:
        batch.run_batch(specs["churn"], day, f"test_queries_churn_{day:%Y%m%d}")
    batch.run_batch(specs["spend"], days[-1], f"test_queries_spend_{days[-1]:%Y%m%d}")
    return days


def run(db_url: str, name: str) -> tuple[list[str], list[tuple]]:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute((QUERIES / name).read_text())
        return [c.name for c in cur.description], cur.fetchall()


def test_every_query_file_is_covered():
    assert {p.name for p in QUERIES.glob("*.sql")} == {
        "top_churn_risk_today.sql", "score_distribution_by_day.sql", "day_over_day_change.sql",
        "which_version_scored_what.sql", "why_top_churn_risk_today.sql",
        "which_feature_drives_predictions_today.sql"}


def test_top_churn_risk_today(db_url, published):
    cols, rows = run(db_url, "top_churn_risk_today.sql")
    assert len(rows) == 20 and cols[:2] == ["customer_id", "churn_probability"]
    scores = [r[1] for r in rows]
    assert scores == sorted(scores, reverse=True)
    (day,) = {r[-1] for r in rows}  # one day: the latest published one
    assert day >= published[-1]


def test_score_distribution_by_day(db_url, published):
    cols, rows = run(db_url, "score_distribution_by_day.sql")
    by_day = {r[0]: r for r in rows}
    assert set(published) <= set(by_day) and by_day[published[-1]][1] == 2_000
    assert all(0 <= r[cols.index("median")] <= 1 for r in rows)


def test_day_over_day_change(db_url, published):
    cols, rows = run(db_url, "day_over_day_change.sql")
    assert rows and cols[:4] == ["customer_id", "previous_score", "score", "change"]
    changes = [abs(r[3]) for r in rows]
    assert changes == sorted(changes, reverse=True)


def test_which_version_scored_what(db_url, published, trained_models):
    cols, rows = run(db_url, "which_version_scored_what.sql")
    mine = {(r[0], r[1]): r for r in rows if str(r[3]).startswith("test_queries_")}
    churn = mine[(published[-1], "churn")]
    assert churn[cols.index("model_version")] == int(trained_models["churn"])
    assert churn[cols.index("rows_stored")] == churn[cols.index("rows_scored")] == 2_000
    assert (published[-1], "spend") in mine


def test_why_top_churn_risk_today(db_url, published):
    """The 10 riskiest of the latest day, 3 reasons each, from the reasons the nightly run stored with the scores."""
    cols, rows = run(db_url, "why_top_churn_risk_today.sql")
    assert cols == ["customer_id", "churn_probability", "rank", "feature", "value", "contribution"]
    _, top = run(db_url, "top_churn_risk_today.sql")
    assert len(rows) == 30 and [r[0] for r in rows[::3]] == [r[0] for r in top[:10]]
    assert all([r[2] for r in rows[i:i + 3]] == [1, 2, 3] for i in range(0, 30, 3))
    assert all(abs(rows[i][5]) >= abs(rows[i + 1][5]) for i in range(0, 30, 3))


def test_which_feature_drives_predictions_today(db_url, published, specs):
    cols, rows = run(db_url, "which_feature_drives_predictions_today.sql")
    assert cols[:3] == ["feature", "top_reason_for", "top_reason_pct"]
    assert {r[0] for r in rows} <= set(specs["churn"].feature_names)
    assert sum(r[1] for r in rows) == 2_000  # every customer of the day has one strongest reason
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
