"""`demo_features`: writes the demo customer snapshot of the run's logical date into features.customer_daily.

Daily, so the nightly predictions always find fresh features. Idempotent: a re-run (or a backfill) replaces the
day's partition in one transaction. Run conf (optional): {"customers": 20000, "seed": 7}.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param, task

with DAG(
    dag_id="demo_features",
    description="Daily synthetic customer feature snapshot (demo data with a planted signal)",
    schedule="@daily",
    start_date=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),  # early: backfills of old days work
    catchup=False,
    max_active_runs=4,
    params={
        "customers": Param(20_000, type="integer", minimum=1, maximum=10_000_000,
                           description="Number of customers in the snapshot (ids 1..customers)"),
        "seed": Param(7, type="integer", minimum=0, description="Seed of the customers' stable traits"),
    },
    tags=["demo", "features"],
    doc_md=__doc__,
) as dag:

    @task(retries=1, retry_delay=dt.timedelta(seconds=30))  # safe to retry: the day is replaced, never appended
    def write_snapshot(**context: Any) -> dict[str, Any]:
        from airflow_tasks.demo_tasks import write_snapshot

        return write_snapshot(context)

    write_snapshot()
