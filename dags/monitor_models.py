"""`monitor_<model>` DAGs, one per batch-served entry of models.yaml: after each nightly run (scheduled on the
`predictions.<model>` Asset the predict DAG's swap publishes), check the day's predictions.

    monitor (drift, quality, score shift, realised metric, challenger; ops table, MLflow run, report) -> alert

`alert` fails with every check that crossed its alert threshold (models.yaml `monitoring:`). Triggerable by hand;
run conf (optional): {"date": "2026-11-01"}.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task

from airflow_tasks import monitor_tasks
from airflow_tasks.predict_tasks import prediction_asset
from scoring.spec import ModelSpec, load_specs

START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def build(spec: ModelSpec) -> DAG:
    with DAG(
        dag_id=f"monitor_{spec.name}",
        description=f"Drift, quality and realised metric of model '{spec.name}' after each nightly run",
        schedule=[prediction_asset(spec)],
        start_date=START,
        catchup=False,
        max_active_runs=1,
        params=monitor_tasks.monitor_params(),
        tags=["monitoring", f"model:{spec.name}", spec.task],
        doc_md=__doc__,
    ) as dag:

        @task(retries=1, retry_delay=dt.timedelta(seconds=30))  # idempotent: a day's rows and run are replaced
        def monitor(**context: Any) -> list[dict[str, Any]]:
            return monitor_tasks.monitor(spec, context)

        @task(retries=0)  # an alert stays an alert
        def alert(summaries: list[dict[str, Any]]) -> None:
            monitor_tasks.alert(spec, summaries)

        alert(monitor())
    return dag


for _spec in load_specs().values():
    if _spec.serving.mode in ("batch", "both"):
        globals()[f"monitor_{_spec.name}"] = build(_spec)
