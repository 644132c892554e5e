"""Group commit (serving/group_commit.py GroupCommit) on the real test PostgreSQL: concurrent submits of one serving
process share transactions, each answered only once its own transaction committed; a crash before the commit
leaves nothing and the clients' retries create each job once."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from scoring import job_queue
from scoring.spec import load_spec
from serving.database import ServingDatabase
from serving.group_commit import GroupCommit

ROW = {"tenure_months": 12, "plan": "basic", "region": None}


@pytest.fixture
def model() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def _concurrently(n: int, fn) -> list:
    """fn(i) from n threads released together; their results (or exceptions) in order."""
    out: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - asserted by the caller
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_concurrent_submits_share_commits_and_each_is_durable_when_answered(db_url, conn, model):
    store = ServingDatabase(load_spec("churn"), db_url, max_size=4).open()
    try:
        n = 48
        answered_visible: list[bool] = [False] * n

        def submit(i: int):
            job, created = store.submit_job(model, job_queue.NewJob([{**ROW, "tenure_months": i}], f"k{i}"))
            with psycopg.connect(db_url, autocommit=True) as other:  # durable = visible to anyone once answered
                answered_visible[i] = other.execute("SELECT count(*) FROM ops.prediction_jobs WHERE id = %s",
                                                    (job.id,)).fetchone()[0] == 1
            return job, created

        results = _concurrently(n, submit)
        assert all(isinstance(r, tuple) and r[1] for r in results), results
        assert all(answered_visible)
        group = store._groups[model]
        assert group.jobs == n and group.groups < n  # grouped: fewer commits than jobs
        commits = conn.execute("SELECT count(DISTINCT xmin::text) FROM ops.prediction_jobs WHERE model_name = %s",
                               (model,)).fetchone()[0]
        assert commits == group.groups
        # retries with the same keys return the same jobs, concurrently too
        again = _concurrently(n, lambda i: store.submit_job(
            model, job_queue.NewJob([{**ROW, "tenure_months": i}], f"k{i}")))
        assert [r[0].id for r in again] == [r[0].id for r in results] and not any(r[1] for r in again)
        with pytest.raises(job_queue.IdempotencyConflict):
            store.submit_job(model, job_queue.NewJob([{**ROW, "plan": "premium"}], "k5"))
        # one job with a value JSON cannot store fails alone; its group-mates are queued
        mixed = _concurrently(6, lambda i: store.submit_job(model, job_queue.NewJob(
            [{**ROW, "tenure_months": float("inf") if i == 0 else 100 + i}], f"m{i}")))
        assert isinstance(mixed[0], ValueError) and all(isinstance(r, tuple) for r in mixed[1:])
    finally:
        store.close()
    assert conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE model_name = %s",
                        (model,)).fetchone()[0] == n + 5


def test_a_crash_between_the_group_insert_and_its_commit_answers_no_one_and_leaves_nothing(db_url, conn, model):
    """The injected fault: the group's connection dies after the multi-row INSERT, before COMMIT."""
    killer = psycopg.connect(db_url, autocommit=True)

    def write_then_die(jobs: list[job_queue.NewJob]) -> list:
        with psycopg.connect(db_url, autocommit=True) as c, c.transaction():
            job_queue.insert_jobs(c, model, jobs)
            killer.execute("SELECT pg_terminate_backend(%s)", (c.info.backend_pid,))
        raise AssertionError("unreachable: the commit must fail")

    crashing = GroupCommit(write_then_die)
    jobs = [job_queue.NewJob([{**ROW, "tenure_months": i}], f"c{i}") for i in range(12)]
    results = _concurrently(12, lambda i: crashing.submit(jobs[i]))
    assert all(isinstance(r, psycopg.OperationalError) for r in results), results  # no request got a 202
    assert conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE model_name = %s",
                        (model,)).fetchone()[0] == 0
    killer.close()

    store = ServingDatabase(load_spec("churn"), db_url, max_size=2).open()
    try:  # the clients retry (same keys) on a healthy process; twice, to show the second is a replay
        first = _concurrently(12, lambda i: store.submit_job(model, jobs[i]))
        second = _concurrently(12, lambda i: store.submit_job(model, jobs[i]))
    finally:
        store.close()
    assert all(created for _, created in first) and not any(created for _, created in second)
    assert conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE model_name = %s",
                        (model,)).fetchone()[0] == 12
