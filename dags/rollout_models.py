"""`rollout_<model>` DAGs, one per online-served entry of models.yaml: one registry move of the model's canary per
run (no schedule: triggered by hand or by the REST API), applied to the gateway by the rollout watcher.

    conf {"action": "promote"}                                the canary becomes champion
    conf {"action": "abort", "reason": "..."}                 its share to 0, the reason recorded
    conf {"action": "share", "percent": 50}                   move its share
    conf {"action": "start", "version": "7", "percent": 10}   a gate-approved version becomes the canary

The automatic rollback is not a DAG: it needs the gateway's request log and acts on the gateway, so it runs in
the watcher beside it (stack/rollout.py, every STACK_ROLLOUT_CHECK_S).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task

from airflow_tasks import rollout_tasks
from scoring.spec import ModelSpec, load_specs

START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def build(spec: ModelSpec) -> DAG:
    with DAG(
        dag_id=f"rollout_{spec.name}",
        description=f"Promote, abort or move the canary of model '{spec.name}'",
        schedule=None,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        params=rollout_tasks.rollout_params(),
        tags=["rollout", f"model:{spec.name}"],
        doc_md=__doc__,
    ) as dag:

        @task(retries=0)  # a move is decided once; a failed one says why
        def move(**context: Any) -> dict[str, Any]:
            return rollout_tasks.run(spec, context)

        move()
    return dag


for _spec in load_specs().values():
    if _spec.serving.online:
        globals()[f"rollout_{_spec.name}"] = build(_spec)
