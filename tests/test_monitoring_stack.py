"""A fresh `make up` (PostgreSQL, MLflow, Airflow on free ports in a temp folder, no features, no model) leaves no
failed DAG run: the scheduler's first runs of train_<model> and predict_<model> (made as soon as the DAGs are
unpaused) end skipped with the reason, the other DAGs succeed, and every DAG runs at most once."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.airflow_api import AirflowClient
from stack.config import StackConfig
from stack.pg import free_port
from stack.up import down, up

pytestmark = pytest.mark.integration


@pytest.fixture()
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stack-first-start-"))
    path.chmod(0o755)  # the postgres user must reach pgdata inside it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _runs(api: AirflowClient, dag_id: str) -> list[dict]:
    return api._call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 50}).json()["dag_runs"]


def test_a_fresh_make_up_leaves_no_failed_run(home: Path) -> None:
    from scoring.spec import load_specs

    cfg = StackConfig(home=home, pg_port=free_port(), mlflow_port=free_port(), airflow_port=free_port(),
                      serving_port=free_port(), components=frozenset({"postgres", "mlflow", "airflow"}))
    batch = [name for name, spec in load_specs().items() if spec.serving.mode in ("batch", "both")]
    # the DAGs with a time schedule: the scheduler makes their first run at once (catchup off)
    timed = [*(f"train_{m}" for m in load_specs()), *(f"predict_{m}" for m in batch), "demo_features"]
    log: list[str] = []
    try:
        up(cfg, out=log.append)
        api = AirflowClient(cfg.airflow_url, cfg.admin_user, cfg.admin_password)
        deadline = time.time() + 420
        runs: dict[str, list[dict]] = {}
        while time.time() < deadline:
            runs = {dag_id: _runs(api, dag_id) for dag_id in timed if api.dag(dag_id)}
            if len(runs) == len(timed) and all(r and all(x["state"] in ("success", "failed") for x in r)
                                                 for r in runs.values()):
                break
            time.sleep(5)
        states = {dag_id: [(r["run_type"], r["state"]) for r in found] for dag_id, found in runs.items()}
        assert set(states) == set(timed) and all(states.values()), f"first runs did not finish: {states}"
        assert all(len(found) == 1 for found in states.values()), f"a DAG ran more than once: {states}"
        failed = {dag_id: s for dag_id, s in states.items() if any(state == "failed" for _, state in s)}
        assert failed == {}, f"failed runs after a fresh make up: {failed}"
        # the model DAGs did not silently succeed: their first task ended skipped, saying why
        for dag_id, first_task in ([(f"train_{m}", "check_window") for m in load_specs()]
                                   + [(f"predict_{m}", "check_features") for m in batch]):
            run_id = _runs(api, dag_id)[0]["dag_run_id"]
            assert api.task_states(dag_id, run_id)[first_task] == "skipped", (dag_id, api.task_states(dag_id, run_id))
        everything = {d["dag_id"] for d in api._call("GET", "/dags", params={"limit": 100}).json()["dags"]}
        for dag_id in everything - set(timed):  # asset-scheduled and other DAGs: nothing failed either
            assert all(r["state"] != "failed" for r in _runs(api, dag_id)), dag_id
    finally:
        down(cfg, out=log.append)
        print("\n".join(log))
