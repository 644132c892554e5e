"""The job endpoints through the real Flask app (create_app) on the real test PostgreSQL; the end-to-end test
scores with an in-process JobWorker and the real registry model."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from scoring import job_queue
from scoring.demo_data import generate_day
from scoring.scorer import Scorer
from scoring.spec import load_spec
from serving.app import create_app
from serving.config import Settings
from serving.database import ServingDatabase
from serving.model_holder import ModelHolder

GOOD = {"tenure_months": 10, "plan": "basic", "contract": "one-year", "region": None, "payment_method": "card",
        "monthly_charges": 55.5, "data_usage_gb": 3.2, "avg_session_minutes": None, "support_calls_30d": 1,
        "late_payments_12m": 0, "num_products": 2, "days_since_last_login": 4}


def jobs_app(url: str, **settings):
    """The real app on the real store (the worker's one pool); the holder is never started (no model needed to
    queue): returns (app, store), the store to close."""
    spec = load_spec("churn")
    store = ServingDatabase(spec, url, timeout_s=settings.get("db_timeout_s", 2.0)).open()
    app = create_app(Settings(model="churn", database_url=url, **settings), holder=ModelHolder(spec), store=store)
    return app, store


@pytest.fixture(scope="module")
def app(db_url):
    app, store = jobs_app(db_url)
    yield app
    store.close()


@pytest.fixture
def client(app):
    return app.test_client()


def n_jobs(conn) -> int:
    return conn.execute("SELECT count(*) FROM ops.prediction_jobs").fetchone()[0]


def test_submit_answers_202_with_location_and_status(client):
    resp = client.post("/v1/models/churn/jobs", json={"records": [GOOD, {**GOOD, "plan": "premium"}]})
    assert resp.status_code == 202, resp.json
    body = resp.json
    assert body["status"] == "queued" and body["records"] == 2 and body["model"] == "churn"
    assert resp.headers["Location"] == body["status_url"] == f"/v1/jobs/{body['id']}"
    status = client.get(resp.headers["Location"])
    assert status.status_code == 200 and status.json["status"] == "queued" and "predictions" not in status.json
    assert status.headers["Retry-After"] == "1"


def test_idempotency_key_makes_one_job(client, conn):
    key = f"order-{uuid.uuid4()}"
    first = client.post("/v1/models/churn/jobs", json={"records": [GOOD]}, headers={"Idempotency-Key": key})
    again = client.post("/v1/models/churn/jobs", json={"records": [GOOD]}, headers={"Idempotency-Key": key})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE idempotency_key = %s",
                        (key,)).fetchone()[0] == 1
    changed = client.post("/v1/models/churn/jobs", json={"records": [{**GOOD, "plan": "premium"}]},
                          headers={"Idempotency-Key": key})
    assert changed.status_code == 422 and changed.json["error"]["code"] == "idempotency_key_reused"
    bad_key = client.post("/v1/models/churn/jobs", json={"records": [GOOD]}, headers={"Idempotency-Key": "x" * 300})
    assert bad_key.status_code == 400


@pytest.mark.parametrize(("body", "status", "code", "column"), [
    ({"records": [{**GOOD, "plan": "gold"}]}, 422, "unknown_category", "plan"),
    ({"records": [{**GOOD, "tenure_months": "ten"}]}, 422, "wrong_type", "tenure_months"),
    ({"records": [{**GOOD, "tenure_months": None}]}, 422, "null_value", "tenure_months"),
    ({"records": [{k: v for k, v in GOOD.items() if k != "plan"}]}, 400, "missing_column", "plan"),
    ({"records": [{**GOOD, "colour": "red"}]}, 400, "unknown_column", "colour"),
    ({"records": []}, 400, "invalid_records", None),
    ({"records": "nope"}, 400, "invalid_records", None),
    ({"records": [GOOD, 3]}, 400, "invalid_records", None),
    ({"rows": [GOOD]}, 400, "unknown_field", None),
    ({"records": [GOOD], "priority": 1}, 400, "unknown_field", None),
    ([GOOD], 400, "invalid_body", None),
])
def test_invalid_records_are_refused_at_the_door_and_never_queued(client, conn, body, status, code, column):
    before = n_jobs(conn)
    resp = client.post("/v1/models/churn/jobs", json=body)
    assert resp.status_code == status, resp.json
    assert resp.json["error"]["code"] == code and resp.json["error"]["column"] == column
    assert n_jobs(conn) == before


def test_not_json_unknown_model_and_too_many_records(client, conn, monkeypatch):
    before = n_jobs(conn)
    assert client.post("/v1/models/churn/jobs", data="{", content_type="application/json").status_code == 400
    assert client.post("/v1/models/churn/jobs", data="records", content_type="text/plain").status_code == 415
    other = client.post("/v1/models/spend/jobs", json={"records": [GOOD]})
    assert other.status_code == 404 and "churn" in other.json["error"]["message"]
    from serving.dataplane import EXTENSION_KEY

    # the setting (SERVING_JOB_MAX_RECORDS), small for the test
    monkeypatch.setattr(client.application.extensions[EXTENSION_KEY].jobs, "max_records", 5)
    big = client.post("/v1/models/churn/jobs", json={"records": [GOOD] * 6})
    assert big.status_code == 413 and big.json["error"]["code"] == "too_many_records"
    assert n_jobs(conn) == before


def test_unknown_and_malformed_job_ids(client):
    missing = client.get(f"/v1/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "job_not_found"
    assert client.get("/v1/jobs/12345").status_code == 400
    assert client.delete(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert client.delete("/v1/jobs/not-a-uuid").json["error"]["code"] == "malformed_job_id"


def test_cancel_queued_job_and_refuse_running(client, conn):
    job_id = client.post("/v1/models/churn/jobs", json={"records": [GOOD]}).json["id"]
    resp = client.delete(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200 and resp.json["status"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200  # cancelling twice is harmless
    assert client.get(f"/v1/jobs/{job_id}").json["status"] == "cancelled"
    # a running job cannot be cancelled (claimed through the queue directly, as a worker would)
    running = client.post("/v1/models/churn/jobs", json={"records": [GOOD]}).json["id"]
    conn.execute("UPDATE ops.prediction_jobs SET status = 'running', worker_id = 'w-test', attempts = 1, "
                 "lease_expires_at = now() + interval '1 hour' WHERE id = %s", (running,))
    refused = client.delete(f"/v1/jobs/{running}")
    assert refused.status_code == 409 and refused.json["error"]["code"] == "job_not_cancellable"
    job_queue.release(conn, "w-test")


def test_bearer_token_protects_the_job_routes(db_url):
    app, store = jobs_app(db_url, api_token="s3cret")
    client = app.test_client()
    assert client.post("/v1/models/churn/jobs", json={"records": [GOOD]}).status_code == 401
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/v1/models/churn/jobs", json={"records": [GOOD]}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 202
    client.delete(ok.json["status_url"], headers={"Authorization": "Bearer s3cret"})
    store.close()


def test_end_to_end_result_equals_scorer(client, db_url, specs, trained_models):
    """Submit over HTTP, one in-process worker step, poll: the predictions are Scorer.score's (Invariant 1)."""
    from serving.job_worker import JobWorker, JobWorkerSettings
    from serving.model_holder import ModelHolder

    spec = specs["churn"]
    frame = generate_day(dt.date(2026, 11, 3), 40, seed=21)[spec.feature_names]
    recs = frame.to_dict(orient="records")
    recs[0]["customer_id"] = 777  # the entity key may ride along: set aside for scoring, echoed in the result
    ids = [client.post("/v1/models/churn/jobs", json={"records": recs[i:i + 4]}).json["id"] for i in range(0, 40, 4)]
    holder = ModelHolder(spec)
    holder.check_now()
    worker = JobWorker("churn", holder, JobWorkerSettings(batch_size=1000), db_url)
    try:
        while worker.step():
            pass
    finally:
        worker._shutdown()
    want = Scorer.from_registry(spec, "champion").score(frame).records()
    want[0]["customer_id"] = 777
    for n, job_id in enumerate(ids):
        body = client.get(f"/v1/jobs/{job_id}").json
        assert body["status"] == "done" and body["model_version"] == trained_models["churn"]
        assert body["predictions"] == want[4 * n:4 * n + 4]
        assert "Retry-After" not in client.get(f"/v1/jobs/{job_id}").headers
    done = client.delete(f"/v1/jobs/{ids[0]}")
    assert done.status_code == 409


def test_job_routes_are_in_the_openapi_document(client):
    doc = client.get("/openapi.json").json
    assert doc["paths"]["/v1/models/{model}/jobs"]["post"]["security"] == [{"bearer": ["jobs"]}]  # its own scope
    assert {"get", "delete"} <= set(doc["paths"]["/v1/jobs/{job_id}"])
    assert doc["paths"]["/v1/jobs/{job_id}"]["get"]["tags"] == ["jobs"]


def test_queue_database_down_is_503_not_500():
    from stack.pg import free_port

    down = f"postgresql://postgres@127.0.0.1:{free_port()}/serving"
    app, store = jobs_app(down, db_timeout_s=0.5)
    client = app.test_client()
    resp = client.post("/v1/models/churn/jobs", json={"records": [GOOD]})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert client.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 503
    # bad input is still refused first, without touching the database
    assert client.post("/v1/models/churn/jobs", json={"records": [{**GOOD, "plan": "gold"}]}).status_code == 422
    store.close()  # stop its reconnect attempts


# ------------------------------------------------------------------ bulk submits, owners, expiry


def test_bulk_submit_queues_each_job_with_its_own_id_in_one_commit(client, conn):
    jobs = [{"records": [{**GOOD, "tenure_months": i}], "idempotency_key": f"bulk-{uuid.uuid4()}"} for i in range(5)]
    jobs.append({"records": [GOOD, {**GOOD, "plan": "premium"}]})  # a key is optional
    resp = client.post("/v1/models/churn/jobs/bulk", json={"jobs": jobs})
    assert resp.status_code == 202, resp.json
    answered = resp.json["jobs"]
    assert len(answered) == 6 and len({j["id"] for j in answered}) == 6
    assert [j["records"] for j in answered] == [1] * 5 + [2] and not any(j["replayed"] for j in answered)
    assert all(j["status"] == "queued" and j["status_url"] == f"/v1/jobs/{j['id']}" for j in answered)
    ids = [j["id"] for j in answered]
    assert conn.execute("SELECT count(DISTINCT xmin::text) FROM ops.prediction_jobs WHERE id = ANY(%s::uuid[])",
                        (ids,)).fetchone()[0] == 1  # one transaction
    again = client.post("/v1/models/churn/jobs/bulk", json={"jobs": jobs[:5]})  # the client's retry
    assert again.status_code == 200 and [j["id"] for j in again.json["jobs"]] == ids[:5]
    assert all(j["replayed"] for j in again.json["jobs"])


def test_bulk_submit_with_one_invalid_record_is_refused_whole_naming_job_and_row(client, conn):
    before = n_jobs(conn)
    jobs = [{"records": [GOOD], "idempotency_key": f"whole-{uuid.uuid4()}"},
            {"records": [GOOD, GOOD, {**GOOD, "plan": "gold"}]},
            {"records": [GOOD]}]
    resp = client.post("/v1/models/churn/jobs/bulk", json={"jobs": jobs})
    assert resp.status_code == 422, resp.json
    err = resp.json["error"]
    assert err["code"] == "unknown_category" and err["column"] == "plan" and err["row"] == 2
    assert err["message"].startswith("job 1, row 2: unknown category 'gold'"), err
    no_plan = {k: v for k, v in GOOD.items() if k != "plan"}
    missing = client.post("/v1/models/churn/jobs/bulk", json={"jobs": [
        {"records": [GOOD]}, {"records": [GOOD]}, {"records": [no_plan]}]})
    assert missing.status_code == 422 and missing.json["error"]["message"].startswith("job 2, row 0: feature 'plan'")
    nowhere = client.post("/v1/models/churn/jobs/bulk", json={"jobs": [{"records": [no_plan]}] * 2})
    assert nowhere.status_code == 400 and nowhere.json["error"]["message"].startswith("job 0: missing feature")
    shape = client.post("/v1/models/churn/jobs/bulk", json={"jobs": [{"records": [GOOD]}, {"records": []}]})
    assert shape.status_code == 400 and "job 1" in shape.json["error"]["message"]
    key = f"taken-{uuid.uuid4()}"
    assert client.post("/v1/models/churn/jobs", json={"records": [GOOD]},
                       headers={"Idempotency-Key": key}).status_code == 202
    reused = client.post("/v1/models/churn/jobs/bulk", json={"jobs": [
        {"records": [GOOD]}, {"records": [{**GOOD, "plan": "premium"}], "idempotency_key": key}]})
    assert reused.status_code == 422 and reused.json["error"]["message"].startswith("job 1: idempotency key")
    assert n_jobs(conn) == before + 1  # nothing of the refused requests was queued


def test_a_job_belongs_to_its_client_and_keys_are_per_client(client, conn, monkeypatch):
    import serving.protocols.jobs as jobs_protocol

    monkeypatch.setattr(jobs_protocol, "current_client", lambda: "alice")
    key = f"shared-{uuid.uuid4()}"
    alice = client.post("/v1/models/churn/jobs", json={"records": [GOOD]}, headers={"Idempotency-Key": key})
    assert alice.status_code == 202
    monkeypatch.setattr(jobs_protocol, "current_client", lambda: "bob")
    bob = client.post("/v1/models/churn/jobs", json={"records": [GOOD]}, headers={"Idempotency-Key": key})
    assert bob.status_code == 202 and bob.json["id"] != alice.json["id"]  # same key, another client: a new job
    alice_url = alice.json["status_url"]
    for method in ("get", "delete"):
        resp = getattr(client, method)(alice_url)
        assert resp.status_code == 404 and resp.json["error"]["code"] == "job_not_found", resp.json
    assert client.get(bob.json["status_url"]).status_code == 200
    monkeypatch.setattr(jobs_protocol, "current_client", lambda: "alice")
    assert client.get(alice_url).json["status"] == "queued"  # bob's DELETE did nothing
    assert conn.execute("SELECT owner FROM ops.prediction_jobs WHERE id = %s",
                        (alice.json["id"],)).fetchone()[0] == "alice"


def test_a_queued_job_expires_after_its_ttl_and_the_status_says_why(db_url):
    app, store = jobs_app(db_url, job_ttl_s=0.3)
    try:
        client = app.test_client()
        resp = client.post("/v1/models/churn/jobs", json={"records": [GOOD]})
        assert resp.status_code == 202 and resp.json["expires_at"]
        import time

        time.sleep(0.5)
        body = client.get(resp.json["status_url"]).json
        assert body["status"] == "expired" and body["finished_at"] and "not claimed" in body["error"], body
        gone = client.delete(resp.json["status_url"])
        assert gone.status_code == 409 and "expired" in gone.json["error"]["message"]
    finally:
        store.close()
