"""Async job endpoints: submit records for later scoring, poll the result, cancel.

    POST   /v1/models/<model>/jobs   {"records": [...]}  -> 202 {"id", "status", "status_url", ...} + Location
           header Idempotency-Key: a retried submit returns the same job (200) and never makes a second one
    GET    /v1/jobs/<id>                                  -> 200 status; with predictions + model_version when done
    DELETE /v1/jobs/<id>                                  -> 200 cancelled (queued jobs only; 409 otherwise)

Records are validated at the door with the same encoder (and the same 4xx answers) as live predict; validation
needs only the spec, so submits are accepted even while no model version is loaded. Workers
(`python -m serving.worker`) do the scoring.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from flask import Blueprint, Response, current_app, jsonify, request, url_for
from psycopg_pool import ConnectionPool, PoolTimeout

from scoring import job_queue
from scoring.db import database_url
from scoring.encoding import encode
from serving.blueprints.meta import DOCS
from serving.blueprints.v1 import check_model
from serving.errors import ApiError
from serving.middleware import require_token
from serving.requests_json import json_body
from serving.state import state

bp = Blueprint("jobs", __name__)

# The app's OpenAPI document is generated from the routes; these are their descriptions (all bearer-protected).
DOCS.update({
    ("/v1/models/{model}/jobs", "post"): (
        'Async job: {"records": [...]} -> 202 + Location; Idempotency-Key header makes retries safe', "jobs", True),
    ("/v1/jobs/{job_id}", "get"): ("Async job status; predictions and model_version when done", "jobs", True),
    ("/v1/jobs/{job_id}", "delete"): ("Cancel a queued async job (409 once running or finished)", "jobs", True),
})

POOL_KEY = "jobs_db_pool"
MAX_RECORDS = int(os.environ.get("SERVING_JOB_MAX_RECORDS", "10000"))
MAX_KEY_LENGTH = 255
_pool_lock = threading.Lock()


def _pool() -> ConnectionPool:
    """This process's pool, opened on first use (after gunicorn forks, never before)."""
    pool = current_app.extensions.get(POOL_KEY)
    if pool is None:
        with _pool_lock:
            pool = current_app.extensions.get(POOL_KEY)
            if pool is None:
                settings = state().settings
                connect = {"autocommit": True, "connect_timeout": max(int(settings.db_timeout_s), 1)}
                pool = ConnectionPool(settings.database_url or database_url(), min_size=1,
                                      max_size=max(settings.db_pool_max, 1), timeout=settings.db_timeout_s,
                                      kwargs=connect, name="jobs", open=True,
                                      check=ConnectionPool.check_connection)  # drop connections a DB restart broke
                current_app.extensions[POOL_KEY] = pool
                atexit.register(pool.close)
    return pool


def _db_unavailable(exc: Exception) -> ApiError:
    return ApiError(503, "unavailable", f"the job queue database is unavailable: {type(exc).__name__}",
                    headers={"Retry-After": "1"})


def _job_id(raw: str) -> Any:
    try:
        return job_queue.parse_job_id(raw)
    except ValueError as exc:
        raise ApiError(400, "malformed_job_id", str(exc)) from exc


def _body(job: job_queue.Job) -> dict[str, Any]:
    body = job.to_dict()
    body["status_url"] = url_for("jobs.get_job", job_id=str(job.id))
    return body


def _job_response(job: job_queue.Job, status: int, **headers: str) -> Response:
    resp = jsonify(_body(job))
    resp.status_code = status
    resp.headers.update(headers)
    if job.status in ("queued", "running"):
        resp.headers["Retry-After"] = "1"  # a polling hint
    return resp


def _records() -> list[dict[str, Any]]:
    """The body's records, with the same checks and error codes as live predict."""
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", 'expected a JSON object {"records": [...]}')
    unknown = sorted(set(body) - {"records"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field '{unknown[0]}' (allowed: records)")
    records = body.get("records")
    if not isinstance(records, list) or not records:
        raise ApiError(400, "invalid_records", "'records' must be a non-empty list of objects")
    if len(records) > MAX_RECORDS:
        raise ApiError(413, "too_many_records",
                       f"{len(records)} records in one job; the limit is {MAX_RECORDS} (SERVING_JOB_MAX_RECORDS)")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ApiError(400, "invalid_records", f"row {i}: each record must be an object", row=i)
    return records


@bp.post("/v1/models/<model>/jobs")
def submit_job(model: str) -> Response:
    st = state()
    require_token(st.settings.api_token)
    check_model(st, model)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()):
        raise ApiError(400, "bad_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters")
    records = _records()
    # The live predict rules (the same encoder): an InputError here is the same 4xx, nothing is queued.
    features, _ = job_queue.split_entity_key(records, st.spec.source.entity_key)
    encode(st.spec, features)
    try:
        with _pool().connection() as conn:
            job, created = job_queue.submit(conn, model, records, idempotency_key=key)
    except job_queue.IdempotencyConflict as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc)) from exc
    except ValueError as exc:  # a value the encoder accepts but JSON storage cannot hold (e.g. Infinity)
        raise ApiError(422, "invalid_input", str(exc)) from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise _db_unavailable(exc) from exc
    location = url_for("jobs.get_job", job_id=str(job.id))
    if created:
        return _job_response(job, 202, Location=location)
    return _job_response(job, 200, Location=location, **{"Idempotent-Replayed": "true"})


@contextlib.contextmanager
def _job_connection() -> Iterator[psycopg.Connection]:
    """A pooled connection for one job operation, with the queue's errors mapped to their HTTP answers."""
    try:
        with _pool().connection() as conn:
            yield conn
    except job_queue.JobNotFound as exc:
        raise ApiError(404, "job_not_found", str(exc)) from exc
    except job_queue.JobStateError as exc:
        raise ApiError(409, "job_not_cancellable", str(exc)) from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise _db_unavailable(exc) from exc


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    require_token(state().settings.api_token)
    jid = _job_id(job_id)
    with _job_connection() as conn:
        job = job_queue.get(conn, jid)
    return _job_response(job, 200)


@bp.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    require_token(state().settings.api_token)
    jid = _job_id(job_id)
    with _job_connection() as conn:
        job = job_queue.cancel(conn, jid)
    return _job_response(job, 200)
