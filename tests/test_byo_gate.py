"""Bring your own model: versions logged from plain Python (stack.demo.train_outside_platform, not the training
DAG) are judged by `evaluate_<model>` (real MLflow, real Airflow dag.test()), exactly as train_<model>'s gate judges.

The model is `byo_churn`: churn's spec under another name (its own registry entry, prediction table and DAGs, so the
session's churn champion is left alone), with a latency budget a loaded test machine keeps (the gate still times
every candidate and records it). In order, on one registry:
  1. a weak first version: promoted against the baseline; the nightly table is scored with it;
  2. a better one: promoted over it, the promotion Asset queues predict_byo_churn, gunicorn hot-reloads it and the
     nightly table is re-scored with it;
  3. a worse one: refused, and becomes the `challenger` (as the training gate's);
  4. one whose signature does not fit the spec: refused, every mismatch named, from the DAG and the CLI.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import psycopg
import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
MODEL = "byo_churn"
WEAK = {"n_estimators": 2, "max_depth": 1, "learning_rate": 0.3}
WORSE = {"n_estimators": 1, "max_depth": 1}


@pytest.fixture(scope="module")
def byo(tmp_path_factory, airflow_db, db_url, demo_features, mlflow_server):
    from testing.model_copy import write_model_copy

    spec_file = write_model_copy(MODEL, tmp_path_factory.mktemp("byo"), db_url,
                                 serving={"mode": "both", "latency_budget_ms": 250})
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELS_FILE", str(spec_file))
    yield {"end": demo_features + dt.timedelta(days=1), "day": demo_features, "models_file": str(spec_file)}
    mp.undo()


@pytest.fixture
def logs(caplog, capfd):
    capfd.readouterr()
    caplog.clear()
    return lambda: caplog.text + capfd.readouterr().out


def _dag(file: str, dag_id: str):
    """A freshly parsed DAG (a run's conf must not stay in the DAG object's params for the next run)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / file), safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def _evaluate(version: str, end: dt.date, hour: int):
    dr = _dag("evaluate_models.py", f"evaluate_{MODEL}").test(
        logical_date=dt.datetime(2026, 11, 3, hour, tzinfo=dt.UTC), run_conf={"version": version, "end_date": str(end)})
    return dr, {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def _tags(version: str) -> dict[str, str]:
    from scoring.registry import version_tags

    return version_tags(MODEL, version)


def _alias(alias: str) -> str | None:
    from scoring.registry import AliasNotFoundError, resolve_version

    try:
        return resolve_version(MODEL, alias)
    except AliasNotFoundError:
        return None


def _promotions(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == f"champion.{MODEL}", AssetEvent.source_run_id == run_id).all())
        return [dict(e.extra or {}) for e in events]


def _nightly(db_url: str, day: dt.date) -> dict[int, int]:
    """Rows per model version in the day's partition of the nightly table."""
    with psycopg.connect(db_url) as conn:
        return dict(conn.execute(f"SELECT model_version, count(*) FROM predictions.{MODEL} "  # noqa: S608
                                 "WHERE prediction_date = %s GROUP BY 1", (day,)).fetchall())


def _predict(day: dt.date, hour: int) -> str:
    dr = _dag("predict_models.py", f"predict_{MODEL}").test(
        logical_date=dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC), run_conf={"date": str(day)})
    return str(dr.state)


def _served_version(url: str, record: dict) -> str | None:
    answer = requests.post(f"{url}/v1/models/{MODEL}/predict", json={"records": [record]}, timeout=5)
    return answer.json().get("model_version") if answer.status_code == 200 else None


def test_a_version_from_anywhere_is_gated_promoted_served_and_rescored(byo, db_url, tmp_path, logs):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    from scoring.spec import load_spec
    from serving.model_holder import smoke_row
    from stack.demo import train_outside_platform
    from stack.pg import free_port
    from stack.services import stop_process
    from testing.servers import start_gunicorn

    end, day = byo["end"], byo["day"]
    # predict_byo_churn is known to Airflow and unpaused (as the dag-processor and `make up` leave it), so a
    # promotion queues an asset-triggered run of it.
    DagBundlesManager().sync_bundles_to_db(deactivate_missing=False)  # the bundle the DAG rows name
    sync_bag_to_db(DagBag(dag_folder=str(REPO / "dags" / "predict_models.py"), safe_mode=False), "dags-folder", None)
    with create_session() as session:
        session.query(DagModel).filter(DagModel.dag_id == f"predict_{MODEL}").update({"is_paused": False})
        session.query(AssetDagRunQueue).filter(AssetDagRunQueue.target_dag_id == f"predict_{MODEL}").delete()

    # 1. a first (weak) version from plain Python: no gate decision until evaluated, then promoted on the baseline
    first = train_outside_platform(db_url, MODEL, end, xgb_params=WEAK)
    assert "gate.decision" not in _tags(first)
    dr, states = _evaluate(first, end, 1)
    assert states == {"evaluate": "success"}, states
    tags = _tags(first)
    assert tags["gate.decision"] == "promoted", tags
    assert tags["gate.reason"].startswith("first version: roc_auc")
    assert _alias("champion") == first
    assert _predict(day, 2) == "success" and _nightly(db_url, day) == {int(first): 2000}

    port = free_port()
    proc = start_gunicorn(MODEL, port, tmp_path / "gunicorn.log",
                          env={"DATABASE_URL": db_url, "MODELS_FILE": byo["models_file"],
                               "SERVING_POLL_INTERVAL_S": "0.3", "SERVING_WORKERS": "1", "SERVING_ACCESS_LOG": ""})
    url, record = f"http://127.0.0.1:{port}", smoke_row(load_spec(MODEL))
    try:
        assert _served_version(url, record) == first
        with create_session() as session:
            session.query(AssetDagRunQueue).filter(AssetDagRunQueue.target_dag_id == f"predict_{MODEL}").delete()

        # 2. a better one: promoted over the first on the same held-out window; the Asset queues the re-score
        better = train_outside_platform(db_url, MODEL, end)
        dr, states = _evaluate(better, end, 3)
        assert states == {"evaluate": "success"}, states
        tags = _tags(better)
        assert tags["gate.decision"] == "promoted", tags
        assert tags["gate.champion_version"] == first
        assert float(tags["gate.candidate_roc_auc"]) > float(tags["gate.champion_roc_auc"])
        assert float(tags["gate.p99_ms"]) <= float(tags["gate.budget_ms"]) == 250  # the latency budget was judged
        assert tags["gate.window"].startswith(f"[{end - dt.timedelta(days=28)}, {end})")
        assert f"gate decision for {MODEL} version {better}: PROMOTED" in logs()
        assert _alias("champion") == better
        assert [e["version"] for e in _promotions(dr.run_id)] == [better]
        with create_session() as session:
            queued = session.query(AssetDagRunQueue).filter(
                AssetDagRunQueue.target_dag_id == f"predict_{MODEL}").count()
        assert queued == 1  # Airflow will run predict_byo_churn for the promotion

        deadline = time.time() + 30  # serving polls the alias and hot-reloads the new champion
        while _served_version(url, record) != better:
            assert time.time() < deadline, "serving did not reload the promoted version"
            time.sleep(0.3)
    finally:
        stop_process(proc)
    assert _predict(day, 4) == "success" and _nightly(db_url, day) == {int(better): 2000}  # re-scored with it

    # 3. a worse one: refused against the champion, and the challenger (scored in shadow), as the training gate does
    worse = train_outside_platform(db_url, MODEL, end, xgb_params=WORSE)
    dr, states = _evaluate(worse, end, 5)
    assert states == {"evaluate": "success"}, states
    tags = _tags(worse)
    assert tags["gate.decision"] == "refused" and "worse than champion" in tags["gate.reason"], tags
    assert tags["gate.challenger"] == "true" and _alias("challenger") == worse
    assert _alias("champion") == better and _promotions(dr.run_id) == []


def _log_unfit_version(db_url: str, end: dt.date) -> str:
    """A version trained on the right matrix but logged with a signature inferred from the raw frame: 'plan' (and
    the other categories) as strings, and without 'region'."""
    import mlflow
    import pandas as pd
    import xgboost as xgb
    from mlflow.models import infer_signature

    from scoring.model_matrix import model_matrix
    from scoring.spec import load_spec

    spec = load_spec(MODEL)
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(f"SELECT {', '.join(spec.feature_names)}, churned FROM features.customer_daily "  # noqa: S608
                           "WHERE snapshot_date = %s AND churned IS NOT NULL", (end - dt.timedelta(days=10),))
        df = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    m = model_matrix(spec, df)
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(m.features, df["churned"][m.valid])
    raw = df[[n for n in spec.feature_names if n != "region"]]
    with mlflow.start_run():
        info = mlflow.xgboost.log_model(model, name="model", registered_model_name=MODEL, pip_requirements=["xgboost"],
                                        signature=infer_signature(raw, model.predict(m.features)))
    return str(info.registered_model_version)


def test_a_version_that_does_not_fit_the_spec_is_refused_naming_every_mismatch(byo, db_url, capsys):
    from scoring import gate

    champion = _alias("champion")
    unfit = _log_unfit_version(db_url, byo["end"])
    dr, states = _evaluate(unfit, byo["end"], 6)
    assert states == {"evaluate": "success"}, states  # a refusal is a decision, not a failure
    tags = _tags(unfit)
    assert tags["gate.decision"] == "refused" and tags["gate.fit"] == "mismatch"
    reason = tags["gate.reason"]
    assert reason.startswith(f"does not fit the spec of model '{MODEL}': ")
    for mismatch in ("missing input 'region'",
                     "input 'plan': signature says string, spec says category code (int)",
                     "input 'contract': signature says string, spec says category code (int)",
                     "input 'payment_method': signature says string, spec says category code (int)"):
        assert mismatch in reason, reason
    assert "tenure_months" not in reason  # what fits is not named
    assert _alias("champion") == champion and _alias("challenger") != unfit and _promotions(dr.run_id) == []

    # the command line judges the same way: exit 1, the same reason
    code = gate.main(["--model", MODEL, "--version", unfit, "--end-date", str(byo["end"])])
    out, err = capsys.readouterr()
    assert code == 1 and '"decision": "refused"' in out and "missing input 'region'" in out
