"""`queue_maintenance`: delete finished async prediction jobs (done, failed, cancelled) older than the retention
age, put back jobs whose worker's lease expired while no worker was running to notice, and drop the online
payload log's days past `payload_retention_days` (default PAYLOAD_RETENTION_DAYS, 30).

Hourly. Retention age: the `retention_hours` param (default QUEUE_RETENTION_HOURS, else 168 = 7 days); a manual
run may override it. The task bodies are in airflow_tasks.queue_tasks, the logic in scoring.job_queue.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, task

from airflow_tasks import queue_tasks

with DAG(
    dag_id="queue_maintenance",
    description="Delete finished async jobs past retention; reclaim expired leases; drop old payload logs",
    schedule="@hourly",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["serving", "async"],
    params=queue_tasks.queue_params(),
    doc_md=__doc__,
) as dag:

    @task
    def purge_finished_jobs(**context: Any) -> int:
        return queue_tasks.purge_finished_jobs(context)

    @task
    def reclaim_expired_leases() -> dict[str, int]:
        return queue_tasks.reclaim_expired_leases()

    @task
    def drop_old_payloads(**context: Any) -> list[str]:
        return queue_tasks.drop_old_payloads(context)

    purge_finished_jobs()
    reclaim_expired_leases()
    drop_old_payloads()
