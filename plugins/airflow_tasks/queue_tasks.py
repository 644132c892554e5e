"""The bodies of the `queue_maintenance` DAG's tasks: retention of finished async jobs and expired leases, over
`scoring.job_queue` (imported inside the tasks, like the other task bodies, so that DAG parsing stays light), and
retention of the online payload log (ops.online_payloads, one partition per day)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk import Param

from airflow_tasks.hooks import serving_db_connection
from scoring import settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionSettings:
    retention_hours: int = settings.setting("QUEUE_RETENTION_HOURS")
    payload_retention_days: int = settings.setting("PAYLOAD_RETENTION_DAYS")


def queue_params() -> dict[str, Param]:
    """Run parameters of the maintenance DAG; the retention defaults come from QUEUE_RETENTION_HOURS and
    PAYLOAD_RETENTION_DAYS."""
    defaults = settings.load(RetentionSettings)
    return {"retention_hours": Param(defaults.retention_hours, type="integer", minimum=0,
                                     description="delete finished jobs older than this many hours"),
            "payload_retention_days": Param(defaults.payload_retention_days, type="integer", minimum=1,
                                            description="drop the online payload log's days older than this")}


def purge_finished_jobs(context: Mapping[str, Any]) -> int:
    """Delete done, failed and cancelled jobs that finished more than `retention_hours` ago."""
    from scoring import job_queue

    hours = int(context["params"]["retention_hours"])
    with serving_db_connection() as conn:
        deleted = job_queue.purge_finished(conn, dt.timedelta(hours=hours))
    log.info("deleted %d finished job(s) older than %dh", deleted, hours)
    return deleted


def reclaim_expired_leases() -> dict[str, int]:
    """Put back jobs whose worker's lease expired while no worker was running to notice (or fail them when
    they are out of attempts)."""
    from scoring import job_queue

    with serving_db_connection() as conn:
        requeued, failed = job_queue.reclaim_expired(conn)
    log.info("expired leases: %d job(s) requeued, %d out of attempts -> failed", requeued, failed)
    return {"requeued": requeued, "failed": failed}


def drop_old_payloads(context: Mapping[str, Any], today: dt.date | None = None) -> list[str]:
    """Drop the online payload log's day partitions older than `payload_retention_days` (UTC days)."""
    days = int(context["params"]["payload_retention_days"])
    before = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=days)
    with serving_db_connection() as conn:
        dropped = [r[0] for r in conn.execute("SELECT ops.drop_online_payloads_before(%s)", (before,)).fetchall()]
        conn.commit()
    log.info("online payload log: dropped %d day partition(s) before %s: %s", len(dropped), before,
             ", ".join(dropped) or "none")
    return dropped
