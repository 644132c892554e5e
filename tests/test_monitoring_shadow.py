"""The challenger in shadow (the nightly predict DAG scores the `challenger` alias into the shadow table; the
monitor compares it with the champion) and the clean first start (scheduled runs before any champion exists end
skipped with the reason, not failed). Real PostgreSQL, MLflow and dag.test()."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psycopg
import pytest
import yaml

from scoring.demo_data import generate_day, write_day

REPO = Path(__file__).resolve().parent.parent
DAY = dt.date(2026, 9, 10)  # before the session's feature history: no other test sees it
CUSTOMERS = 2_000


def parse(file: str, dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / file), safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def predict(day: dt.date):
    dr = parse("predict_models.py", "predict_churn").test(
        logical_date=dt.datetime(day.year, day.month, day.day, 2, tzinfo=dt.UTC), run_conf={"date": str(day)})
    states: dict[str, list[str]] = {}
    for ti in dr.get_task_instances():
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return dr, states


@pytest.fixture(scope="module")
def day(airflow_db, trained_models, db_url):
    with psycopg.connect(db_url) as conn:
        write_day(conn, generate_day(DAY, CUSTOMERS), DAY)
    yield DAY
    with psycopg.connect(db_url, autocommit=True) as conn:
        for table in ("features.customer_daily", "predictions.churn", "predictions.churn_shadow"):
            conn.execute(f"DROP TABLE IF EXISTS {table}_p{DAY:%Y%m%d}")
        conn.execute("DELETE FROM ops.batch_runs WHERE prediction_date = %s", (DAY,))


@pytest.fixture
def challenger_alias(mlflow_server):
    """Put the churn challenger alias back as it was."""
    from mlflow import MlflowClient

    from scoring.registry import CHALLENGER, RegistryError, resolve_version

    mc = MlflowClient()
    try:
        before = resolve_version("churn", CHALLENGER)
    except RegistryError:
        before = None
    yield mc
    if before:
        mc.set_registered_model_alias("churn", CHALLENGER, before)
    else:
        with contextlib.suppress(Exception):  # not set
            mc.delete_registered_model_alias("churn", CHALLENGER)


def test_the_challenger_is_scored_in_shadow_and_compared(day, db_url, specs, trained_models, challenger_alias):
    from scoring.monitoring.shadow import challenger_checks

    champion = trained_models["churn"]
    # No challenger: the shadow step ends skipped and the champion's run is not disturbed.
    with contextlib.suppress(Exception):  # not set
        challenger_alias.delete_registered_model_alias("churn", "challenger")
    dr, states = predict(day)
    assert str(dr.state) == "success", states
    assert states["score_challenger"] == ["skipped"] and states["swap"] == ["success"]

    # The champion's own version as challenger: the shadow must agree everywhere, to the last bit.
    challenger_alias.set_registered_model_alias("churn", "challenger", champion)
    dr, states = predict(day)
    assert str(dr.state) == "success" and states["score_challenger"] == ["success"], states
    with psycopg.connect(db_url) as conn:
        shadow = conn.execute("SELECT customer_id, score, model_version, model_name FROM predictions.churn_shadow "
                              "WHERE prediction_date = %s ORDER BY 1", (day,)).fetchall()
        served = conn.execute("SELECT customer_id, score FROM predictions.churn WHERE prediction_date = %s "
                              "ORDER BY 1", (day,)).fetchall()
        runs = conn.execute("SELECT model_name, status FROM ops.batch_runs WHERE prediction_date = %s "
                            "AND run_id = %s ORDER BY model_name", (day, dr.run_id)).fetchall()
        runs += conn.execute("SELECT model_name, status FROM ops.batch_runs WHERE prediction_date = %s "
                             "AND run_id = %s", (day, f"{dr.run_id}__shadow")).fetchall()
    assert len(shadow) == len(served) == CUSTOMERS
    assert [(k, s) for k, s, _, _ in shadow] == served
    assert {(v, n) for _, _, v, n in shadow} == {(int(champion), "churn_shadow")}
    assert runs == [("churn", "success"), ("churn_shadow", "success")]  # the shadow run never serves
    with psycopg.connect(db_url) as conn:
        found = {c.check: c for c in challenger_checks(conn, specs["churn"], day)}
        assert found["challenger.agreement"].value == 1.0 and found["challenger.mean_abs_diff"].value == 0.0
        assert found["challenger.metric_gain"].value == 0.0
        assert found["challenger.version"].value == int(champion) and found["challenger.rows"].value == CUSTOMERS

        # A challenger that scores the first half of the customers 0.2 higher: worked out from the tables.
        conn.execute("UPDATE predictions.churn_shadow SET score = score + 0.2 WHERE prediction_date = %s "
                     "AND customer_id <= %s", (day, CUSTOMERS // 2))
        conn.commit()
        scores = np.array([s for _, s in served])
        moved = scores.copy()
        moved[: CUSTOMERS // 2] += 0.2
        found = {c.check: c for c in challenger_checks(conn, specs["churn"], day)}
    assert found["challenger.mean_abs_diff"].value == pytest.approx(0.1)  # 0.2 on half of the rows
    assert found["challenger.agreement"].value == pytest.approx(np.mean((scores > 0.5) == (moved > 0.5)))
    assert found["challenger.agreement"].value < 1.0
    assert found["challenger.realised_roc_auc"].status == "info"  # evidence, not an alert


def test_scheduled_runs_before_any_champion_end_skipped(tmp_path, monkeypatch, mlflow_server, db_url):
    import airflow.settings  # noqa: F401 - puts the plugins folder on sys.path
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_tasks import predict_tasks, training_tasks
    from scoring.spec import parse_specs

    document = yaml.safe_load((REPO / "models.yaml").read_text())
    entry = dict(document["models"]["churn"], prediction_table="predictions.firststart")
    spec = parse_specs({"models": {"firststart": entry}})["firststart"]
    scheduled = {"params": {}, "dag_run": SimpleNamespace(run_type="scheduled"),
                 "dag": SimpleNamespace(dag_id="predict_firststart"), "logical_date": dt.datetime(2031, 1, 1)}

    with pytest.raises(AirflowSkipException, match="model 'firststart' has no champion yet .* skipped, not failed"):
        predict_tasks.check_features(spec, scheduled)
    with pytest.raises(AirflowSkipException, match="no champion yet"):
        predict_tasks.check_features(spec, {**scheduled, "dag_run": SimpleNamespace(run_type="asset_triggered")})
    # the training window of a fresh platform is empty: skipped too, with the window's reason
    with pytest.raises(AirflowSkipException, match=r"no champion yet and the training window .*only 0 labelled"):
        training_tasks.check_window(spec, {**scheduled, "params": {"end_date": None, "xgboost_overrides": {}}})
    # A manual run is not skipped: it fails, saying why.
    manual = {**scheduled, "dag_run": SimpleNamespace(run_type="manual")}
    with pytest.raises(Exception, match="no feature rows") as failure:
        predict_tasks.check_features(spec, manual)
    assert not isinstance(failure.value, AirflowSkipException)
