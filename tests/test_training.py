"""Training and the promotion gate: the decision logic (pure), the data window against the real PostgreSQL, and
the full train -> register -> gate path against the real MLflow server (first version, latency budget, retry),
plus the scorer giving MLflow's own predictions for the registered versions."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml

from scoring.demo_data import generate_day
from scoring.encoding import encode
from scoring.scorer import Scorer
from scoring.spec import ModelSpec, load_spec, parse_specs
from scoring.training import (
    GateDecision,
    TrainingError,
    Window,
    baseline_metric,
    check_window,
    decide,
    fit_params,
    load_holdout,
    load_training_data,
    load_window,
    metric_value,
    run_gate,
    train_and_register,
)

REPO = Path(__file__).resolve().parent.parent
CHURN = load_spec("churn")
SPEND = load_spec("spend")


# -- the gate's decision (pure) --------------------------------------------------------------------------------


def test_first_version_must_beat_the_baseline():
    promoted = decide(CHURN, 0.80, 0.5, None, 1.0)
    assert promoted.promoted and promoted.reason.startswith("first version: roc_auc 0.8000 beats the baseline")
    assert promoted.champion_version is None
    assert not decide(CHURN, 0.5, 0.5, None, 1.0).promoted  # equal to a constant is no model
    refused = decide(CHURN, 0.45, 0.5, None, 1.0)
    assert not refused.promoted and "does not beat the trivial baseline 0.5000" in refused.reason


def test_against_the_champion_at_least_as_good_passes():
    assert decide(CHURN, 0.81, 0.5, ("3", 0.80), 1.0).promoted
    equal = decide(CHURN, 0.80, 0.5, ("3", 0.80), 1.0)
    assert equal.promoted and "at least as good as champion v3" in equal.reason
    worse = decide(CHURN, 0.79, 0.5, ("3", 0.80), 1.0)
    assert not worse.promoted and "worse than champion v3 (0.8000)" in worse.reason
    assert worse.champion_version == "3"


def test_lower_is_better_metrics():
    assert decide(SPEND, 9.0, 20.0, ("2", 10.0), 1.0).promoted  # rmse: lower wins
    assert not decide(SPEND, 11.0, 20.0, ("2", 10.0), 1.0).promoted
    assert decide(SPEND, 9.0, 20.0, None, 1.0).promoted
    assert not decide(SPEND, 21.0, 20.0, None, 1.0).promoted


def test_only_a_candidate_refused_for_the_champion_comparison_becomes_challenger():
    worse = decide(CHURN, 0.79, 0.5, ("3", 0.80), 1.0)
    assert not worse.promoted and worse.challenger and worse.tags()["gate.challenger"] == "true"
    assert not decide(CHURN, 0.79, 0.5, ("3", 0.80), 30.0).challenger  # over the latency budget as well
    assert not decide(CHURN, 0.45, 0.5, ("3", 0.80), 1.0).challenger  # no better than a constant
    assert not decide(CHURN, 0.45, 0.5, None, 1.0).challenger  # no champion to run beside
    assert not decide(CHURN, 0.81, 0.5, ("3", 0.80), 1.0).challenger  # promoted instead
    assert "gate.challenger" not in decide(CHURN, 0.81, 0.5, ("3", 0.80), 1.0).tags()


def test_latency_budget_refuses_even_a_better_model():
    slow = decide(CHURN, 0.9, 0.5, ("3", 0.8), 30.0)
    assert not slow.promoted and slow.reason == "single-row p99 30.00 ms is over the budget of 25 ms"
    both = decide(CHURN, 0.7, 0.5, ("3", 0.8), 30.0)
    assert "over the budget" in both.reason and "worse than champion" in both.reason  # every reason is given
    ok = decide(CHURN, 0.9, 0.5, ("3", 0.8), 24.9)
    assert ok.promoted and "p99 24.90 ms within 25 ms" in ok.reason


def test_figures_and_tags():
    decision = decide(CHURN, 0.81234567, 0.5, ("3", 0.8), 1.5)
    assert decision.figures == {"candidate_roc_auc": 0.81234567, "baseline_roc_auc": 0.5, "champion_roc_auc": 0.8,
                                "p99_ms": 1.5, "budget_ms": 25}
    tags = decision.tags()
    assert tags["gate.decision"] == "promoted" and tags["gate.champion_version"] == "3"
    assert tags["gate.candidate_roc_auc"] == "0.812346" and tags["gate.p99_ms"] == "1.5"
    batch_only = decide(CHURN, 0.8, 0.5, None, None)  # no latency figures for a batch-only model
    assert "p99_ms" not in batch_only.figures
    assert GateDecision(False, "x").tags()["gate.champion_version"] == "none"


def test_metrics_and_baseline():
    y = np.array([0, 0, 1, 1])
    assert metric_value(CHURN, y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metric_value(SPEND, np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 1.0
    train = pd.DataFrame({"next_month_spend": [10.0, 20.0]})
    holdout = pd.DataFrame({"next_month_spend": [15.0, 25.0]})
    assert baseline_metric(SPEND, train, holdout) == pytest.approx(np.sqrt((0 + 100) / 2))
    assert baseline_metric(CHURN, train, holdout) == 0.5


def test_overrides_are_validated_and_win_over_the_spec():
    params = fit_params(CHURN, {"n_estimators": 1, "max_depth": 1})
    assert params["n_estimators"] == 1 and params["learning_rate"] == 0.1 and params["random_state"] == 42
    with pytest.raises(TrainingError, match=r"model 'churn': xgboost_overrides.n_estimators: must be an integer"):
        fit_params(CHURN, {"n_estimators": "1"})


def test_window_arithmetic():
    window = Window.ending(CHURN, dt.date(2026, 11, 2))
    assert (window.start, window.holdout_start, window.end) == (dt.date(2026, 10, 5), dt.date(2026, 10, 26),
                                                                dt.date(2026, 11, 2))
    assert str(window) == "[2026-10-05, 2026-11-02) with holdout from 2026-10-26"


# -- the data window, on the real PostgreSQL -------------------------------------------------------------------

TOY_DAY = dt.date(2026, 6, 1)


@pytest.fixture(scope="module")
def toy(db_url) -> ModelSpec:
    """A tiny table and spec: 4 days x 10 labelled rows, with NULLs, an invalid category and a category "NA"."""
    spec = parse_specs({"models": {"toy": {
        "task": "classification", "label": "y", "metric": "roc_auc", "prediction_table": "predictions.toy",
        "source": {"table": "training_test.rows", "entity_key": "id", "date_column": "day"},
        "features": [{"name": "x", "type": "float", "nullable": True},
                     {"name": "colour", "type": "category", "categories": ["red", "NA"]}],
        "schedule": "0 1 * * *", "training": {"history_days": 4, "holdout_days": 2, "min_rows": 30},
    }}})["toy"]
    rows = []
    for d in range(4):
        for i in range(10):
            colour = "NA" if i % 2 else "red"
            x = None if i == 3 else float(i)
            rows.append((TOY_DAY + dt.timedelta(days=d), d * 100 + i, x, colour, i % 2))
    rows.append((TOY_DAY, 999, 1.0, "green", 1))  # invalid category: left out of training, counted
    rows.append((TOY_DAY, 998, 1.0, "red", None))  # unlabelled: not part of the window
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS training_test CASCADE")
        conn.execute("CREATE SCHEMA training_test")
        conn.execute("CREATE TABLE training_test.rows (day date, id bigint, x double precision, colour text, "
                     "y smallint)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO training_test.rows VALUES (%s, %s, %s, %s, %s)", rows)
    yield spec
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA training_test CASCADE")


def test_window_counts_and_copy_load(toy, db_url):
    end = TOY_DAY + dt.timedelta(days=4)
    with psycopg.connect(db_url) as conn:
        stats = check_window(conn, toy, end)
        raw = load_window(conn, toy, stats.window)
        data = load_training_data(conn, toy, end)
    assert (stats.train_rows, stats.holdout_rows) == (21, 20)
    assert len(raw) == 41 and raw["is_holdout"].sum() == 20
    assert set(raw["colour"]) == {"red", "NA", "green"}  # the string "NA" is a value, not a NULL
    assert raw["x"].isna().sum() == 4
    assert (len(data.train), len(data.holdout), data.rows_dropped) == (20, 20, 1)
    assert set(data.train["colour"]) == {0.0, 1.0}
    assert data.holdout_records[3] == {"x": None, "colour": "NA"}  # raw, as a JSON client would send it


def test_window_problems_are_clear(toy, db_url):
    with psycopg.connect(db_url) as conn:
        with pytest.raises(TrainingError, match=r"model 'toy': window \[2020-12-28, 2021-01-01\) .*: only 0 "
                                                r"labelled rows in training_test.rows \(training.min_rows is 30\)"):
            check_window(conn, toy, dt.date(2021, 1, 1))
        small = parse_specs({"models": {"toy": {**_toy_raw(toy), "training": {"history_days": 4, "holdout_days": 2,
                                                                               "min_rows": 1}}}})["toy"]
        with pytest.raises(TrainingError, match="no labelled rows from 2026-06-05 to hold out"):
            check_window(conn, small, TOY_DAY + dt.timedelta(days=6))
        with pytest.raises(TrainingError, match="no labelled rows before 2026-05-31 to train on"):
            check_window(conn, small, TOY_DAY + dt.timedelta(days=1))


def test_a_single_class_is_refused_before_fitting(toy, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE training_test.rows SET y = 0 WHERE day >= %s", (TOY_DAY + dt.timedelta(days=2),))
        try:
            with pytest.raises(TrainingError, match="held-out part .* has only one class of 'y'"):
                load_training_data(conn, toy, TOY_DAY + dt.timedelta(days=4))
        finally:
            conn.execute("UPDATE training_test.rows SET y = id %% 2 WHERE day >= %s",
                         (TOY_DAY + dt.timedelta(days=2),))


def _toy_raw(spec: ModelSpec) -> dict:
    return {"task": spec.task, "label": spec.label, "metric": spec.metric, "prediction_table": spec.prediction_table,
            "source": {"table": spec.source.table, "entity_key": spec.source.entity_key,
                       "date_column": spec.source.date_column},
            "features": [{"name": "x", "type": "float", "nullable": True},
                         {"name": "colour", "type": "category", "categories": ["red", "NA"]}],
            "schedule": spec.schedule}


# -- train -> register -> gate against the real MLflow server --------------------------------------------------


def _trial_spec(features_drop: int = 0, **serving) -> ModelSpec:
    """The churn entry under a fresh model name, so this registry history starts empty."""
    document = yaml.safe_load((REPO / "models.yaml").read_text())
    entry = copy.deepcopy(document["models"]["churn"])
    entry["features"] = entry["features"][:len(entry["features"]) - features_drop]
    entry["prediction_table"] = "predictions.churn_trial"
    entry["xgboost"]["n_estimators"] = 40  # quicker; still far better than the baseline
    entry["serving"].update(serving)
    return parse_specs({"models": {"churn_trial": entry}})["churn_trial"]


def test_first_version_latency_budget_and_retried_gate(mlflow_server, demo_features, db_url):
    from mlflow import MlflowClient

    from scoring.registry import RegistryError, resolve_version

    end = demo_features + dt.timedelta(days=1)
    mc = MlflowClient()
    with psycopg.connect(db_url) as conn:
        # An impossible budget: the first version is registered but refused, and there is no champion.
        slow = train_and_register(_trial_spec(latency_budget_ms=0.001), conn, end)
        assert not slow.decision.promoted and "over the budget of 0.001 ms" in slow.decision.reason
        tags = mc.get_model_version("churn_trial", slow.version).tags
        assert tags["gate.decision"] == "refused" and float(tags["gate.p99_ms"]) > 0.001
        with pytest.raises(RegistryError, match="no version with alias 'champion'"):
            resolve_version("churn_trial", "champion")

        # Within budget, the first version only has to beat the baseline.
        spec = _trial_spec()
        first = train_and_register(spec, conn, end)
        assert first.decision.promoted and first.decision.reason.startswith("first version: roc_auc")
        assert first.decision.figures["candidate_roc_auc"] > 0.7
        assert resolve_version("churn_trial", "champion") == first.version
        assert int(first.version) == int(slow.version) + 1

        # A retried gate (the alias already moved) keeps the decision: idempotent.
        data = load_holdout(conn, spec, end)
        again = run_gate(spec, first.version, data, baseline=0.5)
        assert again.promoted and again.reason == f"version {first.version} is already the champion"
        # The spec's feature list changes: the champion cannot score the new rows, so the baseline decides.
        fewer = _trial_spec(features_drop=1)
        changed = train_and_register(fewer, conn, end)
        assert changed.decision.promoted, changed.decision.reason
        assert changed.decision.reason.startswith(f"champion v{first.version} was trained on other features, "
                                                  f"so against the baseline: roc_auc")
    tags = mc.get_model_version("churn_trial", first.version).tags
    assert tags["gate.decision"] == "promoted" and tags["training_window"] == str(Window.ending(spec, end))
    run = mc.get_run(first.run_id)
    assert float(run.data.metrics["holdout_roc_auc"]) == pytest.approx(first.metric)
    assert run.data.params["n_estimators"] == "40"
    info = mlflow.models.get_model_info(f"models:/churn_trial/{first.version}")
    assert info.signature.inputs.input_names() == spec.feature_names


def test_demo_data_is_deterministic_with_missing_values_and_a_signal():
    day = dt.date(2026, 11, 1)
    a, b = generate_day(day, 5_000), generate_day(day, 5_000)
    pd.testing.assert_frame_equal(a, b)
    assert not generate_day(day + dt.timedelta(days=1), 5_000).equals(a)  # daily behaviour changes
    for column in ("region", "data_usage_gb", "avg_session_minutes", "days_since_last_login"):
        assert 0.01 < a[column].isna().mean() < 0.06  # ~3% missing, as documented
    assert a[["plan", "contract", "tenure_months", "churned"]].notna().all().all()
    # The planted signal: month-to-month contracts churn far more than two-year ones.
    by_contract = a.groupby("contract")["churned"].mean()
    assert by_contract["month-to-month"] > 2 * by_contract["two-year"]


# -- the shared scorer equals MLflow's own predictions ----------------------------------------------------------


@pytest.mark.parametrize("name", ["churn", "spend"])
def test_scorer_matches_mlflow(name, specs, trained_models):
    spec = specs[name]
    version = trained_models[name]
    scorer = Scorer.from_registry(spec, version)
    assert scorer.version == version
    frame = generate_day(dt.date(2026, 11, 2), 300)[spec.feature_names]
    ours = scorer.score(frame)
    model_frame = pd.DataFrame(encode(spec, frame).matrix.astype(np.float64), columns=spec.feature_names)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(model_frame)
    if spec.is_classifier:
        proba = mlflow.xgboost.load_model(f"models:/{name}/{version}").predict_proba(model_frame)[:, 1]
        np.testing.assert_allclose(ours.scores, proba, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ours.labels, np.asarray(pyfunc))
    else:
        np.testing.assert_allclose(ours.scores, np.asarray(pyfunc), rtol=1e-5, atol=1e-4)


# -- the reference profile kept with each version (what monitor_<model> compares every day with) -----------------


@pytest.mark.parametrize("name", ["churn", "spend"])
def test_versions_carry_the_training_windows_reference_profile(name, specs, trained_models, demo_features):
    from mlflow import MlflowClient

    from scoring.monitoring.profile import load_reference

    spec = specs[name]
    version = trained_models[name]
    profile = load_reference(name, version)
    tags = MlflowClient().get_model_version(name, version).tags
    assert tags["monitoring.profile"] == "monitoring/reference_profile.json"
    assert int(tags["monitoring.profile_rows"]) == profile.rows == 28 * 2_000  # the whole window, raw rows
    assert list(profile.features) == spec.feature_names
    for feature in spec.features:
        hist = profile.features[feature.name]
        assert hist.rows == profile.rows
        if feature.type == "category":
            assert hist.bins == list(feature.categories) and hist.counts[-1] == 0  # no unknown spelling
        else:
            assert 2 <= len(hist.counts) <= 10  # deciles, deduplicated
        if feature.nullable:
            assert 0.01 < hist.null_rate < 0.06  # the demo data's ~3% missing
        else:
            assert hist.nulls == 0
    assert profile.score.non_null == 7 * 2_000  # the held-out days' scores
    assert profile.holdout_metric == pytest.approx(float(tags[f"holdout_{spec.metric}"]), rel=1e-5)
    assert float(tags["monitoring.holdout_score_mean"]) == pytest.approx(profile.score_mean, rel=1e-5)
