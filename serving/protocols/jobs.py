"""Async job endpoints: submit records for later scoring, poll the result, cancel.

    POST   /v1/models/<model>/jobs   {"records": [...]}  -> 202 {"id", "status", "status_url", ...} + Location
           header Idempotency-Key: a retried submit returns the same job (200) and never makes a second one
    POST   /v1/models/<model>/jobs/bulk  {"jobs": [{"records": [...], "idempotency_key"?: "..."}, ...]}
           -> 202 {"jobs": [...]} (one entry per job, in order, each its own id): many jobs in one request and
           one commit; one invalid record refuses the whole request (nothing queued), naming the job and row
    GET    /v1/jobs/<id>                                  -> 200 status; with predictions + model_version when done
    DELETE /v1/jobs/<id>                                  -> 200 cancelled (queued jobs only; 409 otherwise)

Records are validated at the door by job intake (serving/job_intake.py) with live predict's encoder and entity-key
check (the same 4xx answers). A 202 means the job is committed: concurrent single submits of one serving process
share one commit (group commit, serving/group_commit.py). A job belongs to the client that submitted it: another
client's job is 404, and idempotency keys are per client. A queued job not claimed within SERVING_JOB_TTL_S ends
`expired` with the reason. Workers (`python -m serving.job_worker`) do the scoring.
"""

from __future__ import annotations

from typing import Any

from flask import Response, request, url_for

from scoring import job_queue
from serving.auth import current_client
from serving.dataplane import plane
from serving.errors import ERROR_SCHEMA, ApiError, error_response
from serving.openapi import ref
from serving.routes import Param, Protocol, Scope, json_answer
from serving.wire import json_body, json_response, records_body

api = Protocol("jobs", "Async predictions through the job queue", ERROR_SCHEMA, error_response)

JOBS = Scope("jobs")  # a client allowed to predict is not thereby allowed to queue work
MAX_KEY_LENGTH = 255

_JOB = {
    "type": "object", "required": ["id", "model", "status", "records", "status_url"],
    "properties": {
        "id": {"type": "string", "format": "uuid"}, "model": {"type": "string"},
        "status": {"enum": ["queued", "running", "done", "failed", "cancelled", "expired"]},
        "records": {"type": "integer"}, "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
        "created_at": {"type": "string"}, "started_at": {"type": ["string", "null"]},
        "finished_at": {"type": ["string", "null"]}, "status_url": {"type": "string"},
        "expires_at": {"type": ["string", "null"], "description": "a queued job not claimed by then expires"},
        "model_version": {"type": "string"}, "predictions": {"type": "array", "items": ref("Prediction")},
        "error": {"type": "string"}}}
_SUBMIT = {"type": "object", "required": ["records"], "additionalProperties": False,
           "properties": {"records": {"type": "array", "minItems": 1, "items": ref("Record")}}}
_KEY = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}
_BULK = {"type": "object", "required": ["jobs"], "additionalProperties": False,
         "properties": {"jobs": {"type": "array", "minItems": 1, "items": {
             "type": "object", "required": ["records"], "additionalProperties": False,
             "properties": {"records": _SUBMIT["properties"]["records"], "idempotency_key": _KEY}}}}}
_BULK_ANSWER = {"type": "object", "required": ["jobs"], "properties": {"jobs": {"type": "array", "items": {
    "allOf": [_JOB, {"type": "object", "required": ["replayed"], "properties": {"replayed": {"type": "boolean"}}}]}}}}


def _job_body(job: job_queue.Job) -> dict[str, Any]:
    body = job.to_dict()
    body["status_url"] = url_for("jobs.get_job", job_id=str(job.id))
    return body


def _valid_key(key: str | None, where: str) -> str | None:
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()):
        raise ApiError(400, "bad_idempotency_key", f"{where} must be 1-{MAX_KEY_LENGTH} printable characters")
    return key


def _job_response(job: job_queue.Job, status: int, **headers: str) -> Response:
    body = _job_body(job)
    if job.status in ("queued", "running"):
        headers["Retry-After"] = "1"  # a polling hint
    return json_response(body, status, headers)


@api.route("POST", "/v1/models/<model>/jobs", auth=JOBS,
           summary='Async job: {"records": [...]} -> 202 + Location; the Idempotency-Key header makes retries safe',
           params=(Param("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
                         "a retried submit with the same key returns the same job", where="header"),),
           request={"application/json": _SUBMIT},
           responses={202: json_answer("Queued", _JOB, "Location", "Retry-After"),
                      200: json_answer("Replayed: the job this Idempotency-Key made before", _JOB, "Location",
                                       "Idempotent-Replayed")},
           errors=(400, 404, 413, 415, 422, 503))
def submit_job(model: str) -> Response:
    key = _valid_key(request.headers.get("Idempotency-Key"), "Idempotency-Key")
    _, records = records_body(("records",))
    job, created = plane().jobs.submit(records, key, current_client())
    location = url_for("jobs.get_job", job_id=str(job.id))
    if created:
        return _job_response(job, 202, Location=location)
    return _job_response(job, 200, Location=location, **{"Idempotent-Replayed": "true"})


@api.route("POST", "/v1/models/<model>/jobs/bulk", auth=JOBS,
           summary='Many async jobs in one request and one commit: {"jobs": [{"records": [...], '
                   '"idempotency_key"?: "..."}]} -> 202; refused whole (nothing queued) when any record is invalid',
           request={"application/json": _BULK},
           responses={202: json_answer("Queued (entries whose key was seen before say replayed: true)", _BULK_ANSWER),
                      200: json_answer("Every job was a replay of an earlier submit with the same key", _BULK_ANSWER)},
           errors=(400, 404, 413, 415, 422, 503))
def submit_bulk(model: str) -> Response:
    jobs = _bulk_body()
    results = plane().jobs.submit_bulk(jobs, current_client())
    body = {"jobs": [{**_job_body(job), "replayed": not created} for job, created in results]}
    return json_response(body, 202 if any(created for _, created in results) else 200)


def _bulk_body() -> list[tuple[list[dict[str, Any]], str | None]]:
    body = json_body()
    if not isinstance(body, dict) or set(body) != {"jobs"}:
        raise ApiError(400, "invalid_body", 'expected a JSON object {"jobs": [{"records": [...]}, ...]}')
    jobs = body["jobs"]
    if not isinstance(jobs, list) or not jobs:
        raise ApiError(400, "invalid_jobs", "'jobs' must be a non-empty list of objects")
    out = []
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise ApiError(400, "invalid_jobs", f"job {i}: each job must be an object")
        unknown = sorted(set(job) - {"records", "idempotency_key"})
        if unknown:
            raise ApiError(400, "unknown_field", f"job {i}: unknown field '{unknown[0]}' "
                                                 f"(allowed: records, idempotency_key)")
        records = job.get("records")
        if not isinstance(records, list) or not records:
            raise ApiError(400, "invalid_records", f"job {i}: 'records' must be a non-empty list of objects")
        for r, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ApiError(400, "invalid_records", f"job {i}, row {r}: each record must be an object", row=r)
        out.append((records, _valid_key(job.get("idempotency_key"), f"job {i}: idempotency_key")))
    return out


@api.route("GET", "/v1/jobs/<job_id>", auth=JOBS,
           summary="Async job status; predictions and model_version when done",
           responses={200: json_answer("The job", _JOB, "Retry-After")}, errors=(400, 404, 503))
def get_job(job_id: str) -> Response:
    return _job_response(plane().jobs.get(job_id, current_client()), 200)


@api.route("DELETE", "/v1/jobs/<job_id>", auth=JOBS,
           summary="Cancel a queued async job (409 once running or finished)",
           responses={200: json_answer("Cancelled", _JOB)}, errors=(400, 404, 409, 503))
def cancel_job(job_id: str) -> Response:
    return _job_response(plane().jobs.cancel(job_id, current_client()), 200)
