"""Airflow on Celery, brought up by `make up`'s own code with STACK_EXECUTOR=celery: its own PostgreSQL (the
Airflow metadata database must not be the one the session's dag.test() runs use), a real redis-server, the
api-server, scheduler, dag-processor, triggerer and two real `airflow celery worker` processes; the session's
MLflow server and champion.

predict_<model> runs there; its task instances show that the shards ran on both workers (their hostname is the
worker's Celery hostname) in the database writers' pool, and its table equals what the LocalExecutor path
(scoring.batch, the very function the DAG's tasks call) writes for the same date.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from scoring.batch import run_batch
from scoring.demo_data import seed_history
from stack.airflow_api import AirflowClient
from stack.celery import POOL
from stack.config import StackConfig
from stack.pg import free_port
from stack.up import down, up

pytestmark = pytest.mark.integration

MODEL = "churn"
DAY = dt.date(2026, 11, 1)


@pytest.fixture(scope="module")
def celery_stack(mlflow_server: str, trained_models: dict[str, str]) -> Iterator[StackConfig]:
    home = Path(tempfile.mkdtemp(prefix="celery-test-"))
    home.chmod(0o755)  # the postgres user must reach pgdata inside it
    cfg = StackConfig(home=home, pg_port=free_port(), mlflow_port=int(mlflow_server.rsplit(":", 1)[1]),
                      airflow_port=free_port(), redis_port=free_port(), executor="celery",
                      components=frozenset({"postgres", "airflow"}))
    log: list[str] = []
    try:
        up(cfg, out=log.append)
        seed_history(DAY, 1, 1_500, url=cfg.db_url("serving"))
        yield cfg
    finally:
        down(cfg, out=log.append)
        print("\n".join(log))
        shutil.rmtree(home, ignore_errors=True)


def _table(url: str, day: dt.date) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT customer_id, score, label, model_version FROM predictions.{MODEL} "
                            "WHERE prediction_date = %s ORDER BY customer_id", (day,)).fetchall()


def _quiet(api: AirflowClient, timeout: float = 300) -> None:
    """Pause every other DAG (the stack unpauses all at creation, so their latest scheduled runs start at once)
    and wait until no task is queued or running (a paused DAG's scheduled tasks are not queued any more): the two
    workers' slots are then free for the run under test."""
    for dag in api._call("GET", "/dags", params={"limit": 100}).json()["dags"]:
        if dag["dag_id"] != f"predict_{MODEL}" and not dag["is_paused"]:
            api._call("PATCH", f"/dags/{dag['dag_id']}", json={"is_paused": True})
    deadline = time.monotonic() + timeout
    busy: list = []
    while time.monotonic() < deadline:
        busy = api._call("GET", "/dags/~/dagRuns/~/taskInstances",
                         params=[("state", s) for s in ("queued", "running")]).json()["task_instances"]
        if not busy:
            return
        time.sleep(2)
    raise AssertionError(f"tasks still busy after {timeout}s: {[(t['dag_id'], t['task_id']) for t in busy]}")


def test_predict_shards_run_on_both_celery_workers_and_match_the_local_path(celery_stack: StackConfig,
                                                                            trained_models: dict[str, str]) -> None:
    cfg = celery_stack
    api = AirflowClient(cfg.airflow_url, cfg.admin_user, cfg.admin_password)
    assert api.wait_for_dag(f"predict_{MODEL}", timeout=180), api.import_errors()
    # Celery hands a task to whichever worker asks first, so a run may still put both shards on one worker (a
    # worker that was a moment slower to ask); up to 3 runs, each of which must succeed with its writers pooled,
    # and at least one of them must have spread its shards over both workers.
    spreads: list[set[str]] = []
    for _ in range(3):
        _quiet(api)
        run_id = f"celery_{uuid.uuid4().hex[:8]}"
        api.trigger(f"predict_{MODEL}", run_id, dt.datetime.now(dt.UTC), conf={"date": DAY.isoformat()})
        state = api.wait(f"predict_{MODEL}", run_id, timeout=600)
        tis = api._call("GET", f"/dags/predict_{MODEL}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        assert state == "success", {t["task_id"]: (t["state"], t["hostname"]) for t in tis}
        shards = [t for t in tis if t["task_id"] == "score_shard"]
        assert len(shards) == 2
        hosts = {t["hostname"] for t in shards}
        assert all(h.startswith(("celery-1@", "celery-2@")) for h in hosts), hosts
        writers = {t["task_id"]: t["pool"] for t in tis if t["task_id"] in ("score_shard", "swap")}
        assert writers == {"score_shard": POOL, "swap": POOL}
        spreads.append(hosts)
        if len(hosts) == 2:
            break
    assert len(spreads[-1]) == 2, f"shards never ran on both workers: {spreads}"

    via_celery = _table(cfg.db_url("serving"), DAY)
    assert len(via_celery) == 1_500 and {str(r[3]) for r in via_celery} == {trained_models[MODEL]}
    # the reference: the same date through scoring.batch in this process (what LocalExecutor's tasks run)
    from scoring.spec import load_spec

    run_batch(load_spec(MODEL), DAY, f"local_{uuid.uuid4().hex[:8]}", url=cfg.db_url("serving"))
    assert _table(cfg.db_url("serving"), DAY) == via_celery
