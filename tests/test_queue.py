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


# ------------------------------------------------------------------ grouped submits, owners, caps, renewal, TTL


def _keyed(n: int, prefix: str = "k", **kw) -> list[job_queue.NewJob]:
    return [job_queue.NewJob([{**ROW, "tenure_months": i}], f"{prefix}{i}", **kw) for i in range(n)]


def _count(conn, model: str) -> int:
    return conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE model_name = %s", (model,)).fetchone()[0]


def test_a_group_is_one_insert_one_commit_and_a_key_twice_in_it_makes_one_job(conn, model):
    jobs = _keyed(20)
    jobs.append(job_queue.NewJob(jobs[3].records, "k3"))  # a retry racing its first try, in the same group
    results = job_queue.submit_many(conn, model, jobs)
    assert [created for _, created in results] == [True] * 20 + [False]
    assert results[20][0].id == results[3][0].id
    assert _count(conn, model) == 20
    # one transaction: every row carries the same inserting transaction id
    assert conn.execute("SELECT count(DISTINCT xmin::text) FROM ops.prediction_jobs WHERE model_name = %s",
                        (model,)).fetchone()[0] == 1


def test_connection_killed_between_group_insert_and_commit_leaves_nothing_and_retry_creates_once(db_url, conn,
                                                                                                  model):
    jobs = _keyed(8)
    victim = psycopg.connect(db_url, autocommit=True)
    with pytest.raises(psycopg.OperationalError), victim.transaction():
        results = job_queue.insert_jobs(victim, model, jobs)
        assert all(created for _, created in results)  # inserted, not yet committed
        # the crash: the serving process (its connection) dies before COMMIT
        conn.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
    victim.close()
    assert _count(conn, model) == 0  # nothing half-accepted (and no 202 was sent)
    first = job_queue.submit_many(conn, model, jobs)  # the clients retry with the same keys
    again = job_queue.submit_many(conn, model, jobs)
    assert all(created for _, created in first) and not any(created for _, created in again)
    assert [j.id for j, _ in first] == [j.id for j, _ in again]
    assert _count(conn, model) == 8


def test_atomic_bulk_with_a_conflicting_key_queues_nothing(conn, model):
    job_queue.submit(conn, model, [ROW], idempotency_key="taken")
    bulk = [*_keyed(3, "new"), job_queue.NewJob([{**ROW, "plan": "premium"}], "taken")]
    with pytest.raises(job_queue.IdempotencyConflict, match="job 3: idempotency key 'taken'") as err:
        job_queue.submit_many(conn, model, bulk, atomic=True)
    assert err.value.index == 3
    assert _count(conn, model) == 1  # the three new jobs were rolled back with it
    with pytest.raises(ValueError, match="job 1, row 0: feature 'tenure_months'"):
        job_queue.submit_many(conn, model, [job_queue.NewJob([ROW]),
                                            job_queue.NewJob([{**ROW, "tenure_months": float("inf")}])])
    assert _count(conn, model) == 1


def test_jobs_and_idempotency_keys_belong_to_their_owner(conn, model):
    alice, _ = job_queue.submit(conn, model, [ROW], idempotency_key="same", owner="alice")
    bob, created = job_queue.submit(conn, model, [ROW], idempotency_key="same", owner="bob")
    assert created and bob.id != alice.id and bob.owner == "bob"
    assert job_queue.get(conn, alice.id, "alice").id == alice.id
    assert job_queue.get(conn, alice.id).id == alice.id  # operators (owner None) see every job
    with pytest.raises(job_queue.JobNotFound):
        job_queue.get(conn, alice.id, "bob")
    with pytest.raises(job_queue.JobNotFound):
        job_queue.cancel(conn, alice.id, "bob")
    assert job_queue.get(conn, alice.id).status == "queued"
    assert job_queue.cancel(conn, alice.id, "alice").status == "cancelled"


def test_claim_stops_adding_jobs_past_the_byte_cap_but_takes_at_least_one(conn, model):
    big = [{**ROW, "tenure_months": i, "plan": "x" * 1000} for i in range(5)]
    for i, rec in enumerate(big):
        job_queue.submit(conn, model, [rec], idempotency_key=f"b{i}")
    size = conn.execute("SELECT max(payload_bytes) FROM ops.prediction_jobs WHERE model_name = %s",
                        (model,)).fetchone()[0]
    assert size > 1000
    assert len(job_queue.claim(conn, model, "w1", 10, 30, max_bytes=1)) == 1  # one job even above the cap
    assert len(job_queue.claim(conn, model, "w2", 10, 30, max_bytes=int(2.5 * size))) == 3
    assert len(job_queue.claim(conn, model, "w3", 10, 30, max_bytes=None)) == 1  # what is left


def test_renewal_extends_only_this_claims_leases(conn, model):
    _submit_many(conn, model, 2)
    claimed = job_queue.claim(conn, model, "w1", 10, lease_s=1)

    def lease_left(job_id) -> float:
        return conn.execute("SELECT extract(epoch FROM lease_expires_at - now()) FROM ops.prediction_jobs "
                            "WHERE id = %s", (job_id,)).fetchone()[0]

    assert lease_left(claimed[0].id) <= 1
    assert job_queue.renew_leases(conn, "w1", claimed, lease_s=60) == 2
    assert lease_left(claimed[0].id) > 50
    time.sleep(1.2)
    assert job_queue.reclaim_expired(conn, model) == (0, 0)  # renewed: not reclaimed after the first lease
    # fenced: another worker id, or the same worker on an older attempt, renews nothing
    assert job_queue.renew_leases(conn, "w2", claimed, lease_s=60) == 0
    stale = [job_queue.ClaimedJob(j.id, j.records, j.attempts - 1, j.max_attempts) for j in claimed]
    assert job_queue.renew_leases(conn, "w1", stale, lease_s=60) == 0


def test_a_queued_job_past_its_ttl_expires_with_the_reason_and_is_never_claimed(conn, model):
    short, _ = job_queue.submit(conn, model, [ROW], ttl_s=0.3)
    swept, _ = job_queue.submit(conn, model, [{**ROW, "tenure_months": 2}], ttl_s=0.3)
    keeps, _ = job_queue.submit(conn, model, [{**ROW, "tenure_months": 3}])  # no TTL
    assert short.expires_at is not None and keeps.expires_at is None
    time.sleep(0.5)
    claimed = job_queue.claim(conn, model, "w1", 10, 30)
    assert [c.id for c in claimed] == [keeps.id]
    job = job_queue.get(conn, short.id)  # expired on read, even with no worker sweeping
    assert job.status == "expired" and job.finished_at is not None
    assert "expired" in job.error and "TTL" in job.error
    assert job.to_dict()["error"] == job.error and job.to_dict()["expires_at"]
    assert job_queue.expire_queued(conn, model) == 1  # the other one, by the worker's sweep
    assert job_queue.get(conn, swept.id).status == "expired"
    with pytest.raises(job_queue.JobStateError, match="expired"):
        job_queue.cancel(conn, swept.id)


@pytest.mark.parametrize("autocommit", [True, False])
def test_a_submit_wakes_listeners_once_and_a_replay_does_not(db_url, model, autocommit):
    with psycopg.connect(db_url, autocommit=True) as listener, psycopg.connect(db_url, autocommit=autocommit) as conn:
        listener.execute(f'LISTEN "{job_queue.channel(model)}"')
        jobs = [job_queue.NewJob([{**ROW, "tenure_months": i}], f"k{i}") for i in range(3)]
        assert all(created for _, created in job_queue.submit_many(conn, model, jobs))
        woken = list(listener.notifies(timeout=2, stop_after=5))
        assert [n.channel for n in woken] == [job_queue.channel(model)]  # one NOTIFY for the group
        replay = job_queue.submit_many(conn, model, jobs)  # the same keys: nothing new, nobody woken
        assert [created for _, created in replay] == [False] * 3
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        n = conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE model_name = %s", (model,)).fetchone()[0]
        assert n == 3
