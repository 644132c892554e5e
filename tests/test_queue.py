"""The queue's core operations against the real test PostgreSQL (scoring/job_queue.py)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import psycopg
import pytest

from scoring import job_queue

ROW = {"tenure_months": 12, "plan": "basic", "region": None}


@pytest.fixture
def conn(db_url: str):
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
def model() -> str:
    """A model name of its own per test, so that tests never see each other's jobs."""
    return f"t_{uuid.uuid4().hex[:10]}"


def _submit_many(conn, model: str, n: int, **kw) -> list[uuid.UUID]:
    return [job_queue.submit(conn, model, [{**ROW, "tenure_months": i}], **kw)[0].id for i in range(n)]


def test_submit_get_and_public_view(conn, model):
    job, created = job_queue.submit(conn, model, [ROW, {**ROW, "plan": "premium"}])
    assert created and job.status == "queued" and job.n_records == 2 and job.attempts == 0
    again = job_queue.get(conn, job.id)
    assert again.id == job.id and again.model == model
    body = again.to_dict()
    assert body["status"] == "queued" and body["records"] == 2 and "predictions" not in body
    payload = conn.execute("SELECT payload FROM ops.prediction_jobs WHERE id = %s", (job.id,)).fetchone()[0]
    assert payload == [ROW, {**ROW, "plan": "premium"}]


def test_idempotency_key_returns_the_same_job(conn, model):
    first, created1 = job_queue.submit(conn, model, [ROW], idempotency_key="k-1")
    second, created2 = job_queue.submit(conn, model, [ROW], idempotency_key="k-1")
    assert created1 and not created2 and first.id == second.id
    n = conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE model_name = %s", (model,)).fetchone()[0]
    assert n == 1
    with pytest.raises(job_queue.IdempotencyConflict, match="k-1"):
        job_queue.submit(conn, model, [{**ROW, "plan": "premium"}], idempotency_key="k-1")
    # the key is per model
    other, created3 = job_queue.submit(conn, model + "_b", [ROW], idempotency_key="k-1")
    assert created3 and other.id != first.id


def test_concurrent_submits_with_one_key_make_one_job(db_url, model):
    ids: list[uuid.UUID] = []
    barrier = threading.Barrier(6)

    def submit() -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            barrier.wait()
            ids.append(job_queue.submit(c, model, [ROW], idempotency_key="same")[0].id)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 6 and len(set(ids)) == 1


def test_nan_is_stored_as_null_and_infinity_refused(conn, model):
    job, _ = job_queue.submit(conn, model, [{**ROW, "region": float("nan")}])
    payload = conn.execute("SELECT payload FROM ops.prediction_jobs WHERE id = %s", (job.id,)).fetchone()[0]
    assert payload == [{**ROW, "region": None}]
    with pytest.raises(ValueError, match="tenure_months"):
        job_queue.submit(conn, model, [{**ROW, "tenure_months": float("inf")}])
    with pytest.raises(ValueError):
        job_queue.submit(conn, model, [])


def test_unknown_and_malformed_ids(conn):
    with pytest.raises(job_queue.JobNotFound):
        job_queue.get(conn, uuid.uuid4())
    with pytest.raises(ValueError, match="malformed job id"):
        job_queue.parse_job_id("not-a-uuid")


def test_concurrent_claims_never_share_a_job(db_url, conn, model):
    ids = set(_submit_many(conn, model, 30))
    with psycopg.connect(db_url, autocommit=True) as other, conn.transaction():
        # A's claim is still uncommitted (rows locked) while B claims: SKIP LOCKED hands B other rows.
        a = job_queue.claim(conn, model, "A", 10, 30)
        b = job_queue.claim(other, model, "B", 100, 30)
    a_ids, b_ids = {j.id for j in a}, {j.id for j in b}
    assert len(a_ids) == 10 and len(b_ids) == 20
    assert not a_ids & b_ids and a_ids | b_ids == ids
    assert job_queue.claim(conn, model, "C", 100, 30) == []
    rows = conn.execute("SELECT worker_id, attempts FROM ops.prediction_jobs WHERE model_name = %s",
                        (model,)).fetchall()
    assert {w for w, _ in rows} == {"A", "B"} and {a for _, a in rows} == {1}


def test_claim_is_fifo_and_skips_cancelled(conn, model):
    ids = _submit_many(conn, model, 5)
    job_queue.cancel(conn, ids[0])
    claimed = job_queue.claim(conn, model, "w", 2, 30)
    assert {j.id for j in claimed} == set(ids[1:3])
    assert claimed[0].records[0]["plan"] == "basic"


def test_results_are_fenced_after_lease_expiry(conn, model):
    (job_id,) = _submit_many(conn, model, 1)
    (mine,) = job_queue.claim(conn, model, "w1", 10, 0.05)
    time.sleep(0.2)
    assert job_queue.reclaim_expired(conn, model) == (1, 0)
    (theirs,) = job_queue.claim(conn, model, "w2", 10, 30)
    assert theirs.id == job_id and theirs.attempts == 2
    late = job_queue.write_outcomes(conn, "w1", "7", [job_queue.Outcome(mine, result=[{"prediction": 1.0}])])
    assert late.fenced == 1 and late.done == 0
    ok = job_queue.write_outcomes(conn, "w2", "7", [job_queue.Outcome(theirs, result=[{"prediction": 2.0}])])
    assert ok.done == 1
    job = job_queue.get(conn, job_id)
    assert job.status == "done" and job.result == [{"prediction": 2.0}] and job.model_version == 7
    assert job.result_writes == 1 and job.worker_id == "w2"
    assert "lease of worker w1 expired" in job.error  # the history of the first attempt is kept


def test_failing_job_is_retried_then_failed_with_reason(conn, model):
    (job_id,) = _submit_many(conn, model, 1, max_attempts=2)
    (first,) = job_queue.claim(conn, model, "w", 10, 30)
    s1 = job_queue.write_outcomes(conn, "w", "1", [job_queue.Outcome(first, error="boom 1")], retry_backoff_s=0.2)
    assert (s1.retried, s1.failed) == (1, 0)
    assert job_queue.claim(conn, model, "w", 10, 30) == []  # backing off
    time.sleep(0.3)
    (second,) = job_queue.claim(conn, model, "w", 10, 30)
    s2 = job_queue.write_outcomes(conn, "w", "1", [job_queue.Outcome(second, error="boom 2")], retry_backoff_s=0.2)
    assert (s2.retried, s2.failed) == (0, 1)
    job = job_queue.get(conn, job_id)
    assert job.status == "failed" and job.attempts == 2 and job.error == "boom 2" and job.finished_at
    assert job.to_dict()["error"] == "boom 2"


def test_expired_lease_out_of_attempts_fails(conn, model):
    (job_id,) = _submit_many(conn, model, 1, max_attempts=1)
    job_queue.claim(conn, model, "w-dead", 10, 0.05)
    time.sleep(0.2)
    assert job_queue.reclaim_expired(conn, model) == (0, 1)
    job = job_queue.get(conn, job_id)
    assert job.status == "failed" and "w-dead" in job.error


def test_cancel_rules(conn, model):
    a, b = _submit_many(conn, model, 2)
    assert job_queue.cancel(conn, a).status == "cancelled"
    assert job_queue.cancel(conn, a).status == "cancelled"  # idempotent
    job_queue.claim(conn, model, "w", 10, 30)
    with pytest.raises(job_queue.JobStateError, match="running"):
        job_queue.cancel(conn, b)
    with pytest.raises(job_queue.JobNotFound):
        job_queue.cancel(conn, uuid.uuid4())


def test_release_gives_jobs_back_without_using_an_attempt(conn, model):
    _submit_many(conn, model, 3)
    job_queue.claim(conn, model, f"w-{model}", 10, 30)  # worker ids are unique per process in real life
    assert job_queue.release(conn, f"w-{model}") == 3
    assert job_queue.counts(conn, model) == {"queued": 3}
    assert {j.attempts for j in job_queue.claim(conn, model, "w2", 10, 30)} == {1}


def test_purge_finished_keeps_recent_and_unfinished(conn, model):
    old_done, new_done, queued, old_cancelled = _submit_many(conn, model, 4)
    claimed = {j.id: j for j in job_queue.claim(conn, model, "w", 2, 30)}
    job_queue.write_outcomes(conn, "w", "1",
                             [job_queue.Outcome(j, result=[{"prediction": 0.0}]) for j in claimed.values()])
    job_queue.cancel(conn, old_cancelled)
    conn.execute("UPDATE ops.prediction_jobs SET finished_at = now() - interval '3 days' WHERE id = ANY(%s)",
                 ([old_done, old_cancelled],))
    deleted = job_queue.purge_finished(conn, dt.timedelta(days=1), batch_size=1)
    assert deleted >= 2
    left = {r[0] for r in conn.execute("SELECT id FROM ops.prediction_jobs WHERE model_name = %s", (model,))}
    assert left == {new_done, queued}


def _claimed(n_records: int, attempts: int = 1) -> job_queue.ClaimedJob:
    return job_queue.ClaimedJob(id=uuid.uuid4(), records=[ROW] * n_records, attempts=attempts, max_attempts=3)


def test_plan_batches_caps_records_and_isolates_retried_jobs():
    fresh = [_claimed(3), _claimed(3), _claimed(5), _claimed(1)]
    retried = [_claimed(1, attempts=2), _claimed(2, attempts=3)]
    plan = job_queue.plan_batches([fresh[0], retried[0], fresh[1], fresh[2], retried[1], fresh[3]], max_records=6)
    # first-time jobs together (<= 6 records per call), then every retried job alone, last
    assert plan == [[fresh[0], fresh[1]], [fresh[2], fresh[3]], [retried[0]], [retried[1]]]
    big = _claimed(50)
    assert job_queue.plan_batches([big, fresh[0]], max_records=6) == [[big], [fresh[0]]]  # an oversize job still runs
    assert job_queue.plan_batches([], 10) == []
