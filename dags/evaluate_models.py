"""`evaluate_<model>` DAGs, one per entry of models.yaml: the promotion gate for any registered version, e.g. one
logged from a notebook or another pipeline (scoring.model_matrix builds what it must be trained on).

    evaluate: the version's fit to the spec (booster format and class, signature = the spec's features, task),
              then the same judgement as train_<model>'s gate (same held-out window, same champion comparison,
              same latency budget): tags gate.decision/gate.reason/figures on the version; a promotion moves
              `champion` and publishes the Asset `champion.<model>` (predict_<model> re-scores at once); a version
              refused only for being worse than the champion becomes the `challenger`.

Triggered by hand (UI or REST), no schedule. Run conf: {"version": "7"} (required), optional
{"end_date": "2026-11-02"} (the window ends the day before; default the run's logical date).
The same from a shell: `python -m scoring.gate --model churn --version 7`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task

from airflow_tasks import gate_tasks
from scoring.spec import ModelSpec, load_specs

START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def build(spec: ModelSpec) -> DAG:
    with DAG(
        dag_id=f"evaluate_{spec.name}",
        description=f"Gate a registered version of model '{spec.name}' (conf {{\"version\": \"7\"}})",
        schedule=None,
        start_date=START,
        catchup=False,
        max_active_runs=1,  # two gates of one model would race for the champion alias
        params=gate_tasks.evaluate_params(),
        tags=["gate", f"model:{spec.name}", spec.task],
        doc_md=__doc__,
    ) as dag:

        # idempotent: re-decides on the same rows; a promotion publishes the champion Asset (via the alias)
        @task(retries=2, retry_delay=dt.timedelta(seconds=30), outlets=[gate_tasks.promotion_alias(spec)])
        def evaluate(**context: Any) -> dict[str, Any]:
            return gate_tasks.evaluate(spec, context)

        evaluate()
    return dag


for _spec in load_specs().values():
    globals()[f"evaluate_{_spec.name}"] = build(_spec)
