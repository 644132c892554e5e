"""`predict_<model>` DAGs run with `dag.test()` against the real PostgreSQL and a real MLflow server.

Days used here lie inside the demo feature history, so the predictions they leave behind are ordinary ones.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from scoring.db import connect

REPO = Path(__file__).resolve().parent.parent
DAG_FILE = REPO / "dags" / "predict_models.py"


def parse(dag_id: str):
    """A freshly parsed DAG per run, as a worker parses it (a run's conf must not leak into the next run)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE), safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags[dag_id]


@pytest.fixture(scope="module")
def ready(airflow_db, trained_models, demo_features, db_url):
    return demo_features


@pytest.fixture
def logs(caplog, capfd):
    capfd.readouterr()
    caplog.clear()
    return lambda: caplog.text + capfd.readouterr().out


def run(dag_id: str, day: dt.date, conf: dict | None = None):
    dr = parse(dag_id).test(logical_date=dt.datetime(day.year, day.month, day.day, 2, tzinfo=dt.UTC),
                            run_conf=conf or {})
    states = {}
    for ti in dr.get_task_instances():
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return dr, states


def predictions(db_url: str, day: dt.date) -> list[tuple]:
    with connect(db_url) as conn:
        return conn.execute("SELECT customer_id, score, label, model_version, run_id FROM predictions.churn "
                            "WHERE prediction_date = %s ORDER BY customer_id", (day,)).fetchall()


def partitions(db_url: str) -> set[str]:
    with connect(db_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'predictions.churn'::regclass")}


def test_dag_shape():
    dag = parse("predict_churn")
    assert dag.catchup is False and dag.max_active_runs == 1 and "batch" in dag.tags
    assert {"date", "model_version"} <= set(dag.params.keys())
    ids = [t.task_id for t in dag.topological_sort()]
    assert ids == ["check_features", "resolve_version", "prepare", "score_shard", "score_challenger", "swap",
                   "drop_expired"]
    swap = dag.get_task("swap")
    assert [a.name for a in swap.outlets] == ["predictions.churn"]
    assert parse("predict_spend").params["model_version"] is None


def test_predict_churn_is_one_row_per_entity_and_reruns_replace(ready, db_url, trained_models):
    day = ready - dt.timedelta(days=1)
    with connect(db_url) as conn:
        n_features = conn.execute("SELECT count(*) FROM features.customer_daily WHERE snapshot_date = %s",
                                  (day,)).fetchone()[0]
    first, states = run("predict_churn", day)
    assert str(first.state) == "success", states
    assert states["score_shard"] == ["success", "success"]  # spec.batch.shards mapped tasks
    rows = predictions(db_url, day)
    assert len(rows) == n_features == 2_000 and len({r[0] for r in rows}) == len(rows)
    assert {r[4] for r in rows} == {first.run_id} and {r[3] for r in rows} == {int(trained_models["churn"])}

    second, states = run("predict_churn", day)
    assert str(second.state) == "success", states
    again = predictions(db_url, day)
    assert len(again) == len(rows) and {r[4] for r in again} == {second.run_id} != {first.run_id}
    assert [r[:3] for r in again] == [r[:3] for r in rows]  # same model, same features: same values
    with connect(db_url) as conn:
        recorded = conn.execute("SELECT run_id, status, rows_scored, model_version FROM ops.batch_runs "
                                "WHERE model_name = 'churn' AND prediction_date = %s ORDER BY id", (day,)).fetchall()
    assert recorded[-2:] == [(first.run_id, "success", 2_000, int(trained_models["churn"])),
                             (second.run_id, "success", 2_000, int(trained_models["churn"]))]

    other = ready - dt.timedelta(days=2)
    third, states = run("predict_churn", other)
    assert str(third.state) == "success", states
    assert {f"churn_p{day:%Y%m%d}", f"churn_p{other:%Y%m%d}"} <= partitions(db_url)
    assert len(predictions(db_url, other)) == 2_000 and len(predictions(db_url, day)) == 2_000


def test_conf_date_and_pinned_version_publish_the_asset(ready, db_url, trained_models):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    day = ready - dt.timedelta(days=3)
    version = trained_models["churn"]
    dr, states = run("predict_churn", ready, {"date": day.isoformat(), "model_version": version})
    assert str(dr.state) == "success", states
    rows = predictions(db_url, day)
    assert len(rows) == 2_000 and {r[3] for r in rows} == {int(version)} and {r[4] for r in rows} == {dr.run_id}
    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "predictions.churn", AssetEvent.source_run_id == dr.run_id).count())
    assert events == 1


def test_a_version_the_gate_did_not_promote_is_refused_naming_it(ready, db_url, trained_models, logs):
    from scoring.registry import client

    version, mc = trained_models["churn"], client()
    day = ready - dt.timedelta(days=4)
    before = predictions(db_url, day)
    mc.set_model_version_tag("churn", version, "gate.decision", "refused")  # as if the alias was moved by hand
    try:
        dr, states = run("predict_churn", ready, {"date": day.isoformat(), "model_version": version})
    finally:
        mc.set_model_version_tag("churn", version, "gate.decision", "promoted")
    assert str(dr.state) == "failed" and states["resolve_version"] == ["failed"], states
    assert f"resolves to version {version}: model 'churn' version {version} was not promoted by the gate" in logs()
    assert predictions(db_url, day) == before  # nothing was scored with it


def test_empty_partition_fails_the_run_saying_so(ready, db_url, logs):
    day = dt.date(2031, 1, 1)
    dr, states = run("predict_churn", day)
    assert str(dr.state) == "failed" and states["check_features"] == ["failed"], states
    assert "no feature rows in features.customer_daily for snapshot_date = 2031-01-01" in logs()
    with connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM ops.batch_runs WHERE prediction_date = %s",
                            (day,)).fetchone()[0] == 0


def test_missing_champion_alias_fails_saying_so(ready, db_url, logs, tmp_path, monkeypatch):
    document = yaml.safe_load((REPO / "models.yaml").read_text())
    orphan = dict(document["models"]["churn"], prediction_table="predictions.nochamp")
    document["models"] = {"nochamp": orphan}
    spec_file = tmp_path / "models.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("MODELS_FILE", str(spec_file))
    day = ready - dt.timedelta(days=1)
    dr, states = run("predict_nochamp", day)
    assert str(dr.state) == "failed" and states["resolve_version"] == ["failed"], states
    assert "model 'nochamp' has no version with alias 'champion'" in logs()
    with connect(db_url) as conn:
        exists = conn.execute("SELECT to_regclass('predictions.nochamp')").fetchone()[0]
        assert exists is None or conn.execute(sql.SQL("SELECT count(*) FROM predictions.nochamp")).fetchone()[0] == 0


def test_bad_conf_is_rejected_naming_the_key():
    import airflow.settings  # noqa: F401 - puts the plugins folder on sys.path

    from airflow_tasks.predict_tasks import ConfError, model_ref, prediction_date

    with pytest.raises(ConfError, match="conf 'date'"):
        prediction_date({"params": {"date": "yesterday"}})
    with pytest.raises(ConfError, match="conf 'model_version'"):
        model_ref({"params": {"model_version": "latest"}})
    assert model_ref({"params": {"model_version": None}}) == "champion"
