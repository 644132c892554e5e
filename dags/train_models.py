"""`train_<model>` DAGs, one per entry of models.yaml: check the data window, train + log + register a version in
MLflow, then the promotion gate (moves the `champion` alias only if the candidate passes, and then publishes the
Asset `champion.<model>`, on which predict_<model> also runs; a candidate refused only for being worse than the
champion becomes the `challenger`, scored in shadow by the nightly run).

A scheduled run of a model without any champion whose window cannot be trained on (a fresh platform) ends
skipped with the reason instead of failed.

Scheduled by the spec's `train_schedule` and triggerable by hand. Run conf (all optional):
  {"end_date": "2026-11-02", "xgboost_overrides": {"n_estimators": 1, "max_depth": 1}}
A bad models.yaml raises SpecError here, so it shows up as an import error of this file naming model and key.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task

from airflow_tasks import gate_tasks, training_tasks
from scoring.spec import ModelSpec, load_specs

START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # runs (and backfills) need logical dates after it


def build(spec: ModelSpec) -> DAG:
    with DAG(
        dag_id=f"train_{spec.name}",
        description=f"Train, register and gate model '{spec.name}' ({spec.task}, metric {spec.metric})",
        schedule=spec.train_schedule,
        start_date=START,
        catchup=False,
        max_active_runs=1,  # two runs of one model would race for the champion alias
        params=training_tasks.train_params(),
        tags=["training", f"model:{spec.name}", spec.task],
        doc_md=__doc__,
    ) as dag:

        @task(retries=0)  # an empty window stays empty on retry
        def check_window(**context: Any) -> dict[str, Any]:
            return training_tasks.check_window(spec, context)

        @task(retries=0)  # a retry would register a second version
        def train_and_register(window: dict[str, Any], **context: Any) -> dict[str, Any]:
            return training_tasks.train(spec, window, context)

        # idempotent: re-decides on the same rows; a promotion publishes the champion Asset (via the alias)
        @task(retries=2, retry_delay=dt.timedelta(seconds=30), outlets=[gate_tasks.promotion_alias(spec)])
        def gate(candidate: dict[str, Any], **context: Any) -> dict[str, Any]:
            return training_tasks.gate(spec, candidate, context)

        gate(train_and_register(check_window()))
    return dag


for _spec in load_specs().values():
    globals()[f"train_{_spec.name}"] = build(_spec)
