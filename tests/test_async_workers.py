"""Real worker processes (`python -m serving.job_worker`) against the real test PostgreSQL and MLflow registry:
exclusive claims across two workers, a SIGKILLed worker's jobs finished by another, poison jobs, SIGTERM,
a PostgreSQL restart, and async results equal to Scorer.score (Invariant 1)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from scoring import job_queue
from scoring.demo_data import generate_day
from scoring.scorer import Scorer
from testing.servers import AsyncWorker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
POISON = -4242  # tenure_months value the injected fault refuses at scoring (valid at the door)


@pytest.fixture
def workers(tmp_path, db_url, mlflow_server, trained_models):
    started: list[AsyncWorker] = []

    def start(model: str = "churn", url: str = db_url, fault: list[str] | None = None,
              **settings: str | float) -> AsyncWorker:
        """The real worker process; with `fault` (e.g. ["--stall", "120"]) the same worker started through the
        test-only launcher testing/faulty_worker.py, whose scorer is wrapped to stall or refuse poison records."""
        env = {**os.environ, "SERVING_MODEL": model, "DATABASE_URL": url, "WORKER_LEASE_S": "2",
               "WORKER_IDLE_POLL_S": "1", "WORKER_RETRY_BACKOFF_S": "0.1", "SERVING_POLL_INTERVAL_S": "60"}
        env.update({k.upper(): str(v) for k, v in settings.items()})
        module = ["testing.faulty_worker", *fault] if fault else ["serving.job_worker"]
        w = AsyncWorker(model, tmp_path / f"worker{len(started)}.log", env, module)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def records(n: int, day: int = 2, seed: int = 11) -> list[dict]:
    frame = generate_day(dt.date(2026, 11, day), n, seed=seed)
    return frame.to_dict(orient="records")


def features(spec, recs: list[dict]) -> list[dict]:
    return [{k: r[k] for k in spec.feature_names} for r in recs]


def submit_all(conn, model: str, jobs: list[list[dict]], **kw) -> list[uuid.UUID]:
    """All jobs in one transaction: they become visible (and NOTIFY fires) together."""
    with conn.transaction():
        return [job_queue.submit(conn, model, recs, **kw)[0].id for recs in jobs]


def wait_finished(conn, ids: list[uuid.UUID], timeout: float = 60) -> dict[uuid.UUID, job_queue.Job]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE id = ANY(%s) AND status IN "
                         "('done', 'failed', 'cancelled')", (ids,)).fetchone()[0]
        if n == len(ids):
            return {i: job_queue.get(conn, i) for i in ids}
        time.sleep(0.1)
    raise AssertionError(f"only {n} of {len(ids)} jobs finished in {timeout}s: {job_queue.counts(conn)}")


def expected(spec, recs: list[dict]) -> list[dict]:
    return Scorer.from_registry(spec, "champion").score(recs).records()


def test_two_workers_never_process_a_job_twice_and_match_the_scorer(workers, conn, specs, trained_models):
    spec = specs["churn"]
    a, b = workers(worker_batch_size=16), workers(worker_batch_size=16)
    ids_ab = {a.wait_ready(), b.wait_ready()}
    rows = features(spec, records(600))
    jobs = [rows[i:i + 1 + i % 3] for i in range(0, 600, 3)][:200]  # 200 jobs of 1-3 records
    ids = submit_all(conn, "churn", jobs)
    done = wait_finished(conn, ids)
    scored = expected(spec, [r for recs in jobs for r in recs])
    start = 0
    for job_id, recs in zip(ids, jobs, strict=True):
        job = done[job_id]
        assert job.status == "done" and job.attempts == 1 and job.result_writes == 1, job
        assert job.model_version == int(trained_models["churn"])
        assert job.result == scored[start:start + len(recs)]  # Invariant 1: bit-identical to Scorer.score
        start += len(recs)
    takers = {done[i].worker_id for i in ids}
    assert takers == ids_ab, "both workers should have taken part of the queue"


def test_sigkilled_workers_jobs_are_finished_by_the_other(workers, conn, specs):
    spec = specs["churn"]
    hung = workers(fault=["--stall", "120"])  # claims, then hangs holding the leases
    hung_id = hung.wait_ready()
    jobs = [[r] for r in features(spec, records(12, seed=5))]
    ids = submit_all(conn, "churn", jobs)
    deadline = time.time() + 30
    while conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE id = ANY(%s) AND worker_id = %s",
                       (ids, hung_id)).fetchone()[0] == 0:
        assert time.time() < deadline, hung.text()[-2000:]
        time.sleep(0.05)
    held = [r[0] for r in conn.execute("SELECT id FROM ops.prediction_jobs WHERE worker_id = %s", (hung_id,))]
    hung.proc.send_signal(signal.SIGKILL)
    hung.proc.wait(10)
    other = workers()
    other_id = other.wait_ready()
    done = wait_finished(conn, ids)
    scored = expected(spec, [r for recs in jobs for r in recs])
    for i, job_id in enumerate(ids):
        job = done[job_id]
        assert job.status == "done" and job.result_writes == 1 and job.result == [scored[i]]
        assert job.worker_id == other_id
    for job_id in held:  # claimed by the dead worker, reclaimed after its lease, finished once
        assert done[job_id].attempts == 2 and "expired" in done[job_id].error


def test_poison_job_fails_after_retry_limit_and_batch_mates_succeed(workers, conn, specs):
    spec = specs["spend"]
    w = workers(model="spend", fault=["--poison", f"tenure_months={POISON}"])
    w.wait_ready()
    good = [[r] for r in features(spec, records(8, seed=3))]
    poison = [{**good[0][0], "tenure_months": POISON}]
    ids = submit_all(conn, "spend", [*good[:4], poison, *good[4:]], max_attempts=3)
    done = wait_finished(conn, ids)
    bad = done[ids[4]]
    assert bad.status == "failed" and bad.attempts == 3 and "injected fault" in bad.error
    assert bad.result is None and bad.finished_at is not None
    scored = expected(spec, [recs[0] for recs in good])
    oks = [done[i] for i in ids[:4] + ids[5:]]
    assert [j.result for j in oks] == [[s] for s in scored]
    assert all(j.status == "done" and j.attempts == 1 for j in oks)
    # they were claimed in the same micro-batch as the poison job (one claim statement, one timestamp)
    assert {j.started_at for j in oks} == {bad.started_at}


def test_sigterm_finishes_the_batch_in_hand_and_exits_zero(workers, conn, specs):
    spec = specs["churn"]
    w = workers(fault=["--stall", "1.5"])
    wid = w.wait_ready()
    ids = submit_all(conn, "churn", [[r] for r in features(spec, records(5, seed=8))])
    deadline = time.time() + 20
    while conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE worker_id = %s AND status = 'running'",
                       (wid,)).fetchone()[0] == 0:
        assert time.time() < deadline
        time.sleep(0.02)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(20) == 0, w.text()[-2000:]
    states = {r[0] for r in conn.execute("SELECT status FROM ops.prediction_jobs WHERE id = ANY(%s)", (ids,))}
    assert states <= {"done", "queued"} and "done" in states, states  # finished or released, never stuck running
    assert "stopped" in w.text()


def test_worker_survives_a_postgresql_restart(workers, specs):
    from testing.platform import Postgres

    # a cluster of its own (restarting the session one would disturb other tests), under the world-readable
    # test root because the server runs as the postgres user
    root = Path(tempfile.mkdtemp(dir=os.environ["TEST_ROOT"]))
    os.chmod(root, 0o755)
    postgres = Postgres(root, databases=("serving",))
    cluster = postgres.cluster
    try:
        url = postgres.migrated("serving")
        spec = specs["churn"]
        w = workers(url=url)
        w.wait_ready()
        rows = features(spec, records(10, seed=9))
        with psycopg.connect(url, autocommit=True) as c:
            first = submit_all(c, "churn", [[r] for r in rows[:5]])
            wait_finished(c, first)
        cluster.stop("fast")
        time.sleep(1.0)
        cluster.start()
        with psycopg.connect(url, autocommit=True) as c:
            second = submit_all(c, "churn", [[r] for r in rows[5:]])
            done = wait_finished(c, second, timeout=60)
        assert all(j.status == "done" and j.result_writes == 1 for j in done.values())
        assert w.proc.poll() is None, "the worker must reconnect, not exit"
        assert "database unavailable" in w.text()
    finally:
        postgres.destroy()


def test_worker_hot_reloads_a_new_champion_between_batches(db_url, conn, specs, trained_models):
    """The worker reuses the online app's ModelHolder: when the alias moves, the next batch uses the new version
    and each job records the version that scored it (in-process worker, real registry)."""
    from mlflow import MlflowClient

    from serving.job_worker import JobWorker, JobWorkerSettings
    from serving.model_holder import ModelHolder

    spec = specs["spend"]
    registry = MlflowClient()
    before = registry.get_model_version_by_alias("spend", "champion").version
    new = registry.copy_model_version(f"models:/spend/{before}", "spend").version
    holder = ModelHolder(spec, poll_interval_s=3600)
    holder.check_now()
    worker = JobWorker("spend", holder, JobWorkerSettings(batch_size=64), db_url)
    rows = features(spec, records(6, seed=4))
    try:
        first = submit_all(conn, "spend", [[r] for r in rows[:3]])
        while worker.step():
            pass
        registry.set_registered_model_alias("spend", "champion", new)
        assert holder.check_now()  # what the holder's poller does every SERVING_POLL_INTERVAL_S
        second = submit_all(conn, "spend", [[r] for r in rows[3:]])
        while worker.step():
            pass
    finally:
        registry.set_registered_model_alias("spend", "champion", before)
        worker._shutdown()
    assert {job_queue.get(conn, i).model_version for i in first} == {int(before)}
    assert {job_queue.get(conn, i).model_version for i in second} == {int(new)}
    assert [job_queue.get(conn, i).result[0] for i in first + second] == expected(spec, rows)  # same booster bytes


def test_a_batch_slower_than_its_lease_keeps_its_jobs_and_is_written_once(workers, conn, specs):
    """Leases are renewed while a claim is being scored: a 4 s batch under a 1.2 s lease is not reclaimed by
    the other worker (which sweeps expired leases every 0.6 s), and each result is written once."""
    spec = specs["churn"]
    slow = workers(fault=["--stall", "4"], worker_lease_s=1.2)
    slow_id = slow.wait_ready()
    jobs = [[r] for r in features(spec, records(6, seed=21))]
    ids = submit_all(conn, "churn", jobs)
    deadline = time.time() + 30
    while conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE id = ANY(%s) AND worker_id = %s",
                       (ids, slow_id)).fetchone()[0] < len(ids):
        assert time.time() < deadline, slow.text()[-2000:]
        time.sleep(0.02)
    other = workers(worker_lease_s=1.2)  # would reclaim the slow worker's jobs if their leases lapsed
    other.wait_ready()
    done = wait_finished(conn, ids)
    scored = expected(spec, [r for recs in jobs for r in recs])
    for i, job_id in enumerate(ids):
        job = done[job_id]
        assert job.status == "done" and job.worker_id == slow_id, (job, other.text()[-1500:])
        assert job.attempts == 1 and job.result_writes == 1 and job.error is None
        assert job.result == [scored[i]]
    assert "reclaimed" not in other.text()


def test_a_claim_stops_at_the_byte_cap(workers, conn, specs):
    spec = specs["churn"]
    w = workers(worker_max_claim_bytes=1, worker_batch_size=50)  # every claim: exactly one job
    wid = w.wait_ready()
    ids = submit_all(conn, "churn", [[r] for r in features(spec, records(5, seed=22))])
    done = wait_finished(conn, ids)
    assert all(done[i].status == "done" and done[i].worker_id == wid for i in ids)
    started = {done[i].started_at for i in ids}
    assert len(started) == 5  # five claims of one job each (the cap), not one claim of five
