"""Attribution drift (scoring/monitoring/attribution.py) on the demo's planted drift, against the real PostgreSQL
and the champions' reference profiles in MLflow. Days in August 2026: no other test uses them."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from scoring.demo_data import DRIFT_FEATURE, generate_day, write_day
from scoring.monitoring.attribution import attribution_checks, measure, window_bounds

CLEAN, DRIFT = dt.date(2026, 8, 10), dt.date(2026, 8, 11)


@pytest.fixture(scope="module")
def days(db_url, trained_models):
    with psycopg.connect(db_url) as conn:
        for day in (CLEAN, DRIFT):
            write_day(conn, generate_day(day, 2_000, drift_from=DRIFT), day)
    yield
    with psycopg.connect(db_url, autocommit=True) as conn:
        for day in (CLEAN, DRIFT):
            conn.execute(f"DROP TABLE IF EXISTS features.customer_daily_p{day:%Y%m%d}")


def flagged(db_url, spec, day) -> dict[str, str]:
    from scoring.monitoring.profile import load_reference
    from scoring.scorer import Scorer

    scorer = Scorer.from_registry(spec, "champion")
    reference = load_reference(spec.name, scorer.version)
    with psycopg.connect(db_url) as conn:
        found = measure(conn, scorer, day, reference.window)
    checks = attribution_checks(spec, found)
    assert {c.check for c in checks} == {f"{kind}.{f}" for f in spec.feature_names
                                        for kind in ("attribution", "attribution_mean_abs")}
    return {c.check: c.status for c in checks if c.status in ("warn", "alert")}


def test_window_bounds_of_a_profile():
    assert window_bounds("[2026-10-04, 2026-11-01) with holdout from 2026-10-25") == (
        dt.date(2026, 10, 4), dt.date(2026, 11, 1))
    with pytest.raises(ValueError, match="not a training window"):
        window_bounds("last week")


@pytest.mark.parametrize("name", ["spend", "churn"])
def test_attribution_drift_flags_the_planted_drift_and_nothing_on_a_clean_day(name, specs, db_url, days):
    spec = specs[name]
    assert flagged(db_url, spec, CLEAN) == {}
    drifted = flagged(db_url, spec, DRIFT)
    if name == "spend":  # spend uses the session length (0.15 per minute): its influence moves
        assert drifted == {f"attribution.{DRIFT_FEATURE}": "alert"}
    else:  # churn's label ignores it: at most that feature, never another one
        assert set(drifted) <= {f"attribution.{DRIFT_FEATURE}"}
