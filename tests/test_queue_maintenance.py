"""The retention DAG (dags/queue_maintenance.py) run with dag.test() against the real test PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from scoring import job_queue

REPO = Path(__file__).resolve().parent.parent


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "queue_maintenance.py"), safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags["queue_maintenance"]


def test_dag_shape():
    dag = _dag()
    assert dag.catchup is False and dag.max_active_runs == 1
    assert {t.task_id for t in dag.tasks} == {"purge_finished_jobs", "reclaim_expired_leases", "drop_old_payloads"}
    assert dag.params["retention_hours"] == 168 and dag.params["payload_retention_days"] == 30


def test_dag_run_deletes_old_finished_jobs_and_reclaims_leases(airflow_db, conn):
    from airflow.utils.state import DagRunState, TaskInstanceState

    model = f"t_{uuid.uuid4().hex[:10]}"
    ids = [job_queue.submit(conn, model, [{"x": i}])[0].id for i in range(5)]
    old_done, old_failed, recent_done, queued, expired = ids
    claimed = job_queue.claim(conn, model, f"w-{model}", 3, 30)  # the three oldest: old_done, old_failed, recent
    by_id = {j.id: j for j in claimed}
    job_queue.write_outcomes(conn, f"w-{model}", "1", [
        job_queue.Outcome(by_id[old_done], result=[{"prediction": 1.0}]),
        job_queue.Outcome(by_id[recent_done], result=[{"prediction": 1.0}])])
    conn.execute("UPDATE ops.prediction_jobs SET max_attempts = 1 WHERE id = %s", (old_failed,))
    job_queue.write_outcomes(conn, f"w-{model}", "1", [job_queue.Outcome(by_id[old_failed], error="boom")])
    conn.execute("UPDATE ops.prediction_jobs SET finished_at = now() - interval '3 hours' WHERE id = ANY(%s)",
                 ([old_done, old_failed],))
    # a job whose worker died an hour ago: the DAG puts it back in the queue
    conn.execute("UPDATE ops.prediction_jobs SET status = 'running', worker_id = 'dead', attempts = 1, "
                 "lease_expires_at = now() - interval '1 hour' WHERE id = %s", (expired,))

    # the payload log's partitions: one far in the past (dropped), yesterday's (kept, inside the retention)
    today = dt.datetime.now(dt.UTC).date()
    old, recent = today - dt.timedelta(days=400), today - dt.timedelta(days=1)
    for day in (old, recent):
        conn.execute("SELECT ops.ensure_online_payload_partition(%s)", (day,))

    dr = _dag().test(logical_date=dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
                     run_conf={"retention_hours": 2, "payload_retention_days": 30})
    assert dr.state == DagRunState.SUCCESS
    assert {ti.task_id: ti.state for ti in dr.get_task_instances()} == {
        "purge_finished_jobs": TaskInstanceState.SUCCESS, "reclaim_expired_leases": TaskInstanceState.SUCCESS,
        "drop_old_payloads": TaskInstanceState.SUCCESS}
    parts = {r[0] for r in conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                        "WHERE i.inhparent = 'ops.online_payloads'::regclass").fetchall()}
    assert f"online_payloads_p{old:%Y%m%d}" not in parts and f"online_payloads_p{recent:%Y%m%d}" in parts
    left = dict(conn.execute("SELECT id, status FROM ops.prediction_jobs WHERE model_name = %s",
                             (model,)).fetchall())
    assert left == {recent_done: "done", queued: "queued", expired: "queued"}
