"""The training and demo-feature DAGs run with `dag.test()` against the real PostgreSQL and a real MLflow server.

The session's `trained_models` fixture (and other tests) may already have registered versions, so assertions
are relative to the registry state before each run; the champion alias is put back afterwards so that other
test files still find the version they expect.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WEAK = {"n_estimators": 1, "max_depth": 1}


class FreshDags:
    """A freshly parsed DAG per run, as a worker parses it: dag.test() runs tasks in this process, and a run's
    conf would otherwise stay in the DAG object's params for the next run."""

    def __getitem__(self, dag_id: str):
        from airflow.dag_processing.dagbag import DagBag

        path = REPO / "dags" / ("demo_features.py" if dag_id == "demo_features" else "train_models.py")
        bag = DagBag(dag_folder=str(path), safe_mode=False)
        assert bag.import_errors == {}
        return bag.dags[dag_id]


@pytest.fixture(scope="module")
def dags(airflow_db) -> FreshDags:
    return FreshDags()


@pytest.fixture
def logs(caplog, capfd):
    """Everything the runs logged (task logs go to stdout and to the logging capture)."""
    capfd.readouterr()
    caplog.clear()
    return lambda: caplog.text + capfd.readouterr().out


@pytest.fixture(scope="module")
def registry(mlflow_server, trained_models):
    from mlflow import MlflowClient

    return MlflowClient()


@pytest.fixture
def keep_champion(registry):
    """Put the churn champion alias back where it was (other test files assert on it)."""
    before = registry.get_model_version_by_alias("churn", "champion").version
    yield before
    registry.set_registered_model_alias("churn", "champion", before)


def _versions(registry, name: str) -> set[int]:
    return {int(v.version) for v in registry.search_model_versions(f"name='{name}'")}


def _run(dag, logical_date: dt.datetime, conf: dict | None = None):
    from airflow.utils.state import DagRunState

    dr = dag.test(logical_date=logical_date, run_conf=conf or {})
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    return dr, states, DagRunState


def _promotion_events(run_id: str) -> list[dict]:
    """The `champion.churn` Asset events a training run published (the gate adds one only when it promotes)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "champion.churn", AssetEvent.source_run_id == run_id).all())
        return [dict(e.extra or {}) for e in events]


def _new_version(registry, name: str, before: set[int]) -> int:
    new = _versions(registry, name) - before
    assert len(new) == 1, f"expected exactly one new version of {name}, got {sorted(new)}"
    return new.pop()


@pytest.fixture(scope="module")
def weak_run(dags, registry, demo_features):
    """One run of train_churn with a deliberately weak candidate, while the session's good model is champion."""
    champion = registry.get_model_version_by_alias("churn", "champion").version
    before = _versions(registry, "churn")
    end = demo_features + dt.timedelta(days=1)
    dr, states, DagRunState = _run(dags["train_churn"], dt.datetime(2026, 11, 2, 4, tzinfo=dt.UTC),
                                   {"end_date": str(end), "xgboost_overrides": WEAK})
    return {"dr": dr, "states": states, "success": DagRunState.SUCCESS, "champion": champion, "end": end,
            "version": _new_version(registry, "churn", before)}


def test_train_churn_registers_and_gate_refuses_a_worse_candidate(weak_run, registry):
    dr, champion, end = weak_run["dr"], weak_run["champion"], weak_run["end"]
    assert dr.state == weak_run["success"], weak_run["states"]
    assert weak_run["states"] == {"check_window": "success", "train_and_register": "success", "gate": "success"}
    tags = registry.get_model_version("churn", str(weak_run["version"])).tags
    assert tags["gate.decision"] == "refused"
    assert "worse than champion" in tags["gate.reason"]
    assert tags["gate.champion_version"] == champion
    assert float(tags["gate.candidate_roc_auc"]) < float(tags["gate.champion_roc_auc"])
    assert float(tags["gate.p99_ms"]) <= float(tags["gate.budget_ms"])
    assert tags["training_window"].startswith(f"[{end - dt.timedelta(days=28)}, {end})")
    assert tags["features"].split(",")[0] == "tenure_months"
    assert '"n_estimators": 1' in tags["xgboost_overrides"]
    # The refused version stays registered, without the alias.
    assert registry.get_model_version_by_alias("churn", "champion").version == champion
    run = registry.get_run(tags["run_id"])
    assert run.data.params["n_estimators"] == "1" and run.data.params["max_depth"] == "1"
    assert run.data.tags["airflow_run_id"] == dr.run_id
    # Refused only for the champion comparison (within the latency budget): it runs in shadow as the challenger,
    # and a refusal publishes no promotion.
    assert tags["gate.challenger"] == "true"
    assert registry.get_model_version_by_alias("churn", "challenger").version == str(weak_run["version"])
    assert _promotion_events(dr.run_id) == []


def test_train_churn_promotes_a_better_candidate(dags, registry, weak_run, keep_champion, logs):
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    from scoring.spec import load_spec
    from scoring.training import Window

    # The predict DAGs are known to Airflow (as the dag-processor would have stored them), so a promotion
    # queues an asset-triggered run of predict_churn.
    predict_bag = DagBag(dag_folder=str(REPO / "dags" / "predict_models.py"), safe_mode=False)
    sync_bag_to_db(predict_bag, "dags-folder", None)
    with create_session() as session:  # unpaused, as `make up` leaves it (Airflow queues only for active DAGs)
        session.query(DagModel).filter(DagModel.dag_id == "predict_churn").update({"is_paused": False})
        session.query(AssetDagRunQueue).filter(AssetDagRunQueue.target_dag_id == "predict_churn").delete()

    # Arrange: the weak (refused) version serves, as if an earlier, worse model had been promoted.
    weak, end = weak_run["version"], weak_run["end"]
    registry.set_registered_model_alias("churn", "champion", str(weak))
    before = _versions(registry, "churn")

    dr, states, DagRunState = _run(dags["train_churn"], dt.datetime(2026, 11, 2, 6, tzinfo=dt.UTC),
                                   {"end_date": str(end)})

    assert dr.state == DagRunState.SUCCESS, states
    version = _new_version(registry, "churn", before)
    assert registry.get_model_version_by_alias("churn", "champion").version == str(version)
    tags = registry.get_model_version("churn", str(version)).tags
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.champion_version"] == str(weak)
    assert float(tags["gate.candidate_roc_auc"]) > float(tags["gate.champion_roc_auc"]) + 0.02
    assert tags["gate.window"] == str(Window.ending(load_spec("churn"), end))
    assert set(tags) >= {"gate.reason", "gate.baseline_roc_auc", "gate.p99_ms", "gate.budget_ms",
                         "gate.holdout_rows", "run_id", "training_window", "features"}
    # The decision and its figures are in the task log.
    out = logs()
    assert f"gate decision for churn version {version}: PROMOTED" in out
    assert '"champion_roc_auc"' in out and '"p99_ms"' in out
    # The promotion published the champion Asset, which predict_churn is scheduled on (besides its cron):
    # Airflow queued an asset-triggered predict_churn run.
    assert [e["version"] for e in _promotion_events(dr.run_id)] == [str(version)]
    schedule = predict_bag.dags["predict_churn"].timetable
    assert schedule.asset_condition.name == "champion.churn"
    assert schedule.timetable.expression == "0 2 * * *"  # and still its nightly cron
    with create_session() as session:
        queued = session.query(AssetDagRunQueue).filter(AssetDagRunQueue.target_dag_id == "predict_churn").count()
    assert queued == 1


def test_train_defaults_to_the_logical_date(dags, registry, logs):
    """No conf: the window ends at the run's logical date (here one with no data yet, so the window check fails
    with the reason, naming the window, and nothing is registered)."""
    before = _versions(registry, "spend")
    dr, states, DagRunState = _run(dags["train_spend"], dt.datetime(2027, 6, 1, 4, 30, tzinfo=dt.UTC))

    assert dr.state == DagRunState.FAILED
    assert states == {"check_window": "failed", "train_and_register": "upstream_failed", "gate": "upstream_failed"}
    assert _versions(registry, "spend") == before
    assert "model 'spend': window [2027-05-04, 2027-06-01) with holdout from 2027-05-25: only 0 labelled rows" \
        in logs()


def test_too_small_window_fails_with_the_reason(dags, registry, demo_features, logs):
    before = _versions(registry, "churn")
    dr, states, DagRunState = _run(dags["train_churn"], dt.datetime(2026, 11, 2, 7, tzinfo=dt.UTC),
                                   {"end_date": "2021-03-01"})

    assert dr.state == DagRunState.FAILED
    assert states["check_window"] == "failed" and states["gate"] == "upstream_failed"
    assert _versions(registry, "churn") == before
    out = logs()
    assert "TrainingError" in out
    assert "model 'churn': window [2021-02-01, 2021-03-01)" in out
    assert "only 0 labelled rows in features.customer_daily (training.min_rows is 1000)" in out


@pytest.mark.parametrize("overrides, problem", [
    ({"n_trees": 3}, "'n_trees' was unexpected"),
    ({"n_estimators": "3"}, "'3' is not of type 'integer'"),
    ({"learning_rate": 0}, "less than or equal to the minimum of 0"),
])
def test_bad_overrides_are_refused_when_the_run_is_triggered(dags, registry, overrides, problem):
    before = _versions(registry, "churn")
    with pytest.raises(Exception, match="xgboost_overrides") as info:
        dags["train_churn"].test(logical_date=dt.datetime(2026, 11, 2, 8, tzinfo=dt.UTC),
                                 run_conf={"xgboost_overrides": overrides})
    assert problem in str(info.value)
    assert _versions(registry, "churn") == before


def test_run_date_falls_back_to_run_after_and_conf_dates_are_checked():
    from types import SimpleNamespace

    import airflow  # noqa: F401 - importing Airflow puts plugins/ on sys.path

    from airflow_tasks.run_dates import ConfError, conf_date, run_date

    after = dt.datetime(2026, 11, 3, 4, tzinfo=dt.UTC)
    assert run_date({"logical_date": dt.datetime(2026, 11, 2, 23, tzinfo=dt.UTC)}) == dt.date(2026, 11, 2)
    # A run triggered through the API without a logical date still has a date: its run_after.
    assert run_date({"logical_date": None, "dag_run": SimpleNamespace(run_after=after)}) == dt.date(2026, 11, 3)
    assert conf_date("2026-11-02", "end_date") == dt.date(2026, 11, 2)
    assert conf_date(None, "end_date") is None and conf_date("", "end_date") is None
    with pytest.raises(ConfError, match="conf 'end_date': expected a date YYYY-MM-DD, got '02/11/2026'"):
        conf_date("02/11/2026", "end_date")


def test_demo_features_writes_the_logical_day_idempotently(dags, db_url):
    import psycopg

    day = dt.date(2024, 2, 29)  # far from the test history, so no other test sees it
    try:
        for customers in (300, 200):
            dr, states, DagRunState = _run(dags["demo_features"], dt.datetime(2024, 2, 29, tzinfo=dt.UTC),
                                           {"customers": customers})
            assert dr.state == DagRunState.SUCCESS and states == {"write_snapshot": "success"}, states
            with psycopg.connect(db_url) as conn:
                rows, ids = conn.execute("SELECT count(*), count(DISTINCT customer_id) FROM features.customer_daily "
                                         "WHERE snapshot_date = %s", (day,)).fetchone()
            assert rows == ids == customers  # the re-run replaced the day, it did not append
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS features.customer_daily_p20240229")
