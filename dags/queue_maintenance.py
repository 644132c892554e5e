"""Async queue maintenance: delete finished prediction jobs (done, failed, cancelled) older than the retention
age, and put back jobs whose worker's lease expired while no worker was running to notice.

Retention age: the `retention_hours` param (default QUEUE_RETENTION_HOURS, else 168 = 7 days); a manual run may
override it. The logic lives in scoring.job_queue; this file only schedules it.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, Param, get_current_context, task

from scoring import job_queue

DEFAULT_RETENTION_HOURS = int(os.environ.get("QUEUE_RETENTION_HOURS", "168"))

with DAG(
    dag_id="queue_maintenance",
    description="Delete finished async prediction jobs past retention; reclaim expired leases",
    schedule="@hourly",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["serving", "async"],
    params={"retention_hours": Param(DEFAULT_RETENTION_HOURS, type="integer", minimum=0,
                                     description="delete finished jobs older than this many hours")},
) as dag:

    @task
    def purge_finished_jobs() -> int:
        from airflow_tasks.hooks import serving_db_connection

        hours = int(get_current_context()["params"]["retention_hours"])
        with serving_db_connection() as conn:
            deleted = job_queue.purge_finished(conn, dt.timedelta(hours=hours))
        print(f"deleted {deleted} finished job(s) older than {hours}h")
        return deleted

    @task
    def reclaim_expired_leases() -> dict[str, int]:
        from airflow_tasks.hooks import serving_db_connection

        with serving_db_connection() as conn:
            requeued, failed = job_queue.reclaim_expired(conn)
        print(f"expired leases: {requeued} job(s) requeued, {failed} out of attempts -> failed")
        return {"requeued": requeued, "failed": failed}

    purge_finished_jobs()
    reclaim_expired_leases()
