"""`predict_<model>` DAGs, one per batch-served entry of models.yaml: score the run's date with the champion
version into the model's prediction table, atomically.

    check_features -> resolve_version -> prepare -> score_shard x N (mapped) -> swap [Asset] -> drop_expired
                                       prepare -> score_challenger (shadow, beside the shards) -> swap

Scheduled by the spec's `schedule` (catchup off; backfill with `airflow backfill create`) OR by the Asset
`champion.<model>` the training gate publishes on a promotion (that run re-scores the latest predicted day with
the new champion); triggerable by hand. A scheduled or promotion run before any champion exists ends skipped.
The version aliased `challenger`, if any, scores the same day into `<prediction table>_shadow`.
Run conf (all optional): {"date": "2026-11-01", "model_version": "3"}.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, task

from airflow_tasks import predict_tasks
from airflow_tasks.gate_tasks import promotion_asset
from scoring.spec import ModelSpec, load_specs

START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # runs (and backfills) need logical dates after it


def build(spec: ModelSpec) -> DAG:
    table_asset = predict_tasks.prediction_asset(spec)
    with DAG(
        dag_id=f"predict_{spec.name}",
        description=f"Batch predictions of model '{spec.name}' into {spec.prediction_table}",
        # the nightly cron, or at once when the gate promotes a new champion
        schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedule, timezone="UTC"),
                                     assets=promotion_asset(spec)),
        start_date=START,
        catchup=False,
        max_active_runs=1,  # one staging table per (model, date): runs of one model must not overlap
        params=predict_tasks.predict_params(),
        tags=["batch", f"model:{spec.name}", spec.task],
        doc_md=__doc__,
    ) as dag:

        @task(retries=0)  # a missing partition is reported at once; re-trigger when the features are loaded
        def check_features(**context: Any) -> str:
            return predict_tasks.check_features(spec, context)

        @task(retries=2, retry_delay=dt.timedelta(seconds=20))  # MLflow may blink
        def resolve_version(**context: Any) -> str:
            return predict_tasks.resolve_version(spec, context)

        @task(retries=1)
        def prepare(day: str, version: str, **context: Any) -> dict[str, Any]:
            return predict_tasks.prepare(spec, day, version, context)

        @task(retries=2, retry_delay=dt.timedelta(seconds=10),  # a shard commits once: a retry never duplicates
              pool="serving_db_writers", priority_weight=10)  # pooled writers; queued before the shadow work
        def score_shard(plan: dict[str, Any], shard: int) -> dict[str, Any]:
            return predict_tasks.score_shard(spec, plan, shard)

        @task(trigger_rule="none_failed_min_one_success",  # a skipped challenger must not skip the swap
              outlets=[table_asset], retries=0, pool="serving_db_writers")  # too many rejects stays so
        def swap(plan: dict[str, Any], shard_results: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
            return predict_tasks.swap(spec, plan, shard_results, context)

        @task(retries=0)  # best effort: never in the champion's way (a failure ends it skipped with the reason)
        def score_challenger(day: str, **context: Any) -> dict[str, Any]:
            return predict_tasks.score_challenger(spec, day, context)

        @task(retries=1)
        def drop_expired(day: str) -> list[str]:
            return predict_tasks.drop_expired(spec, day)

        day = check_features()
        version = resolve_version()
        day >> version
        plan = prepare(day, version)
        shards = score_shard.partial(plan=plan).expand(shard=list(range(spec.batch.shards)))
        challenger = score_challenger(day)
        plan >> challenger  # after prepare, beside the shards: the shadow is in place when swap publishes
        swapped = swap(plan, shards)
        challenger >> swapped
        swapped >> drop_expired(day)
    return dag


for _spec in load_specs().values():
    if _spec.serving.mode in ("batch", "both"):
        globals()[f"predict_{_spec.name}"] = build(_spec)
