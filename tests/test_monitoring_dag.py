"""`monitor_<model>` with dag.test() against the real PostgreSQL and MLflow: a clean day passes, a day with the
demo generator's planted drift fails its `alert` task on exactly the drifted feature; the ops rows, the MLflow
run (metrics and report artifacts) and the report page rendered by headless Chromium.

The days used lie before the session's feature history (September 2026), so no other test sees them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest

from scoring.demo_data import DRIFT_FEATURE, generate_day, write_day

REPO = Path(__file__).resolve().parent.parent
PREVIOUS, CLEAN, DRIFT = dt.date(2026, 9, 1), dt.date(2026, 9, 2), dt.date(2026, 9, 3)
CUSTOMERS = 2_000


def parse(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "monitor_models.py"), safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags[dag_id]


@pytest.fixture(scope="module")
def days(airflow_db, trained_models, db_url, specs):
    """Three predicted days of churn: two clean, the last with drift planted from it on."""
    from scoring.batch import run_batch

    with psycopg.connect(db_url) as conn:
        for day in (PREVIOUS, CLEAN, DRIFT):
            write_day(conn, generate_day(day, CUSTOMERS, drift_from=DRIFT), day)
    for day in (PREVIOUS, CLEAN, DRIFT):
        run_batch(specs["churn"], day, f"test_monitor__{day}", url=db_url)
    yield
    with psycopg.connect(db_url, autocommit=True) as conn:
        for day in (PREVIOUS, CLEAN, DRIFT):
            conn.execute(f"DROP TABLE IF EXISTS features.customer_daily_p{day:%Y%m%d}")
            conn.execute(f"DROP TABLE IF EXISTS predictions.churn_p{day:%Y%m%d}")
            conn.execute(f"DROP TABLE IF EXISTS predictions.churn_reasons_p{day:%Y%m%d}")
        conn.execute("DELETE FROM ops.batch_runs WHERE run_id LIKE 'test_monitor__%'")
        conn.execute("DELETE FROM ops.monitoring_checks WHERE monitor_date BETWEEN %s AND %s", (PREVIOUS, DRIFT))


@pytest.fixture
def logs(caplog, capfd):
    capfd.readouterr()
    caplog.clear()
    return lambda: caplog.text + capfd.readouterr().out


def run(day: dt.date):
    dr = parse("monitor_churn").test(logical_date=dt.datetime(day.year, day.month, day.day, 3, tzinfo=dt.UTC),
                                     run_conf={"date": day.isoformat()})
    return dr, {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def checks(db_url: str, day: dt.date) -> dict[str, tuple]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT check_name, value, threshold, status FROM ops.monitoring_checks "
                            "WHERE model_name = 'churn' AND monitor_date = %s", (day,)).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_dag_shape_and_schedule():
    dag = parse("monitor_churn")
    assert [t.task_id for t in dag.topological_sort()] == ["monitor", "alert"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["predictions.churn"]  # after each nightly run
    assert "monitor_spend" in parse("monitor_spend").dag_id


def test_a_clean_day_passes(days, db_url, specs, logs):
    dr, states = run(CLEAN)
    assert str(dr.state) == "success" and states == {"monitor": "success", "alert": "success"}, states
    found = checks(db_url, CLEAN)
    assert not [name for name, (_, _, status) in found.items() if status == "alert"]
    assert {f"psi.{f}" for f in specs["churn"].feature_names} <= set(found)
    assert {f"attribution.{f}" for f in specs["churn"].feature_names} <= set(found)  # attribution drift (issue 22)
    assert found["psi.avg_session_minutes"][0] < 0.1
    assert found["rows"][0] == CUSTOMERS and found["row_count_change"][0] == 0.0
    assert found["reject_rate"][0] == 0.0
    assert 0.6 < found["realised_roc_auc"][0] < 1.0  # the demo data carries the labels
    assert {"score_psi.holdout", "score_psi.previous_day", "metric_degradation",
            "null_rate_increase.region"} <= set(found)
    # the day before got its realised metric too (its labels are in), filed under its own date
    assert "realised_roc_auc" in checks(db_url, PREVIOUS)


def test_a_drifted_day_alerts_on_exactly_the_drifted_feature(days, db_url, specs, logs, tmp_path):
    from mlflow import MlflowClient

    from testing.screenshot import screenshot

    dr, states = run(DRIFT)
    assert str(dr.state) == "failed" and states == {"monitor": "success", "alert": "failed"}, states
    found = checks(db_url, DRIFT)
    feature_alerts = {name for name, (_, _, status) in found.items()
                      if status == "alert" and name.split(".")[0] in ("psi", "null_rate_increase")}
    assert feature_alerts == {f"psi.{DRIFT_FEATURE}"}
    value, threshold, _ = found[f"psi.{DRIFT_FEATURE}"]
    assert value > 0.25 and threshold == 0.25
    out = logs()
    assert f"psi.{DRIFT_FEATURE} = {value:.4g} >= alert threshold 0.25" in out
    assert "model 'churn':" in out and "alert(s)" in out

    # One MLflow run for the day in the monitoring experiment: the checks as metrics, the report as artifacts.
    mc = MlflowClient()
    experiment = mc.get_experiment_by_name("serving/churn-monitoring")
    runs = mc.search_runs([experiment.experiment_id], f"tags.monitor_date = '{DRIFT}'")
    assert len(runs) == 1
    run_data = runs[0]
    assert run_data.data.metrics[f"psi.{DRIFT_FEATURE}"] == pytest.approx(value)
    assert run_data.data.tags["status"] == "alert"
    names = {a.path for a in mc.list_artifacts(run_data.info.run_id, "report")}
    assert {"report/index.html", "report/score_distribution.png", "report/metric_history.png",
            f"report/feature_{DRIFT_FEATURE}.png", "report/attribution.png"} <= names
    page = Path(mc.download_artifacts(run_data.info.run_id, "report/index.html", str(tmp_path)))
    assert f"psi.{DRIFT_FEATURE}" in page.read_text()

    # The page renders in headless Chromium.
    shot = screenshot(page, tmp_path / "report.png", width=1000, height=1400)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real picture, not a blank page

    # A re-run of the day replaces its rows and reuses its MLflow run.
    run(DRIFT)
    assert len(mc.search_runs([experiment.experiment_id], f"tags.monitor_date = '{DRIFT}'")) == 1
    assert set(checks(db_url, DRIFT)) == set(found)


def test_online_traffic_is_in_the_drift_checks(days, db_url, specs, trained_models):
    """A clean batch day whose logged live traffic (ops.online_payloads, written by the serving payload log)
    carries the planted drift: the monitor alerts on exactly the online check of the drifted feature."""
    from scoring.encoding import encode
    from scoring.scorer import Scorer
    from serving.payload_log import PayloadLog, Sampled

    spec = specs["churn"]
    scorer = Scorer.from_registry(spec, trained_models["churn"])
    live = generate_day(CLEAN, 1_000, seed=11, drift_from=CLEAN)  # other customers, drifted, seen online
    matrix = encode(spec, live[spec.feature_names]).matrix
    at = dt.datetime(CLEAN.year, CLEAN.month, CLEAN.day, 15, tzinfo=dt.UTC).timestamp()
    plog = PayloadLog(spec, db_url, rate=1.0, capacity_rows=10_000)
    assert plog.offer(Sampled(at, scorer.version, "v1", "test-online", matrix, scorer.predict_matrix(matrix), None))
    assert plog.flush()
    try:
        dr, states = run(CLEAN)
        assert states == {"monitor": "success", "alert": "failed"}, states
        found = checks(db_url, CLEAN)
        assert found["online.rows"][0] == 1_000
        alerted = {name for name, (_, _, status) in found.items() if status == "alert"}
        assert alerted == {f"online.psi.{DRIFT_FEATURE}"}  # the batch day itself is clean
        assert {f"online.psi.{f}" for f in spec.feature_names} <= set(found)
        assert found["online.score_psi.holdout"][2] in ("ok", "warn")
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DELETE FROM ops.online_payloads WHERE model_name = 'churn' AND log_date = %s", (CLEAN,))
        run(CLEAN)  # the day's rows back to the batch's own
