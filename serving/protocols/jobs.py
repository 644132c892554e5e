"""Async job endpoints: submit records for later scoring, poll the result, cancel.

    POST   /v1/models/<model>/jobs   {"records": [...]}  -> 202 {"id", "status", "status_url", ...} + Location
           header Idempotency-Key: a retried submit returns the same job (200) and never makes a second one
    GET    /v1/jobs/<id>                                  -> 200 status; with predictions + model_version when done
    DELETE /v1/jobs/<id>                                  -> 200 cancelled (queued jobs only; 409 otherwise)

Records are validated at the door by the data plane with live predict's encoder (the same 4xx answers). Workers
(`python -m serving.worker`) do the scoring.
"""

from __future__ import annotations

from flask import Response, request, url_for

from scoring import job_queue
from serving.dataplane import plane
from serving.errors import ERROR_SCHEMA, ApiError, error_response
from serving.openapi import ref
from serving.routes import Param, Protocol, Scope, json_answer
from serving.wire import check_entity_keys, json_response, records_body

api = Protocol("jobs", "Async predictions through the job queue", ERROR_SCHEMA, error_response)

PREDICT = Scope("predict")
MAX_KEY_LENGTH = 255

_JOB = {
    "type": "object", "required": ["id", "model", "status", "records", "status_url"],
    "properties": {
        "id": {"type": "string", "format": "uuid"}, "model": {"type": "string"},
        "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
        "records": {"type": "integer"}, "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
        "created_at": {"type": "string"}, "started_at": {"type": ["string", "null"]},
        "finished_at": {"type": ["string", "null"]}, "status_url": {"type": "string"},
        "model_version": {"type": "string"}, "predictions": {"type": "array", "items": ref("Prediction")},
        "error": {"type": "string"}}}
_SUBMIT = {"type": "object", "required": ["records"], "additionalProperties": False,
           "properties": {"records": {"type": "array", "minItems": 1, "items": ref("Record")}}}


def _job_response(job: job_queue.Job, status: int, **headers: str) -> Response:
    body = job.to_dict()
    body["status_url"] = url_for("jobs.get_job", job_id=str(job.id))
    if job.status in ("queued", "running"):
        headers["Retry-After"] = "1"  # a polling hint
    return json_response(body, status, headers)


@api.route("POST", "/v1/models/<model>/jobs", auth=PREDICT,
           summary='Async job: {"records": [...]} -> 202 + Location; the Idempotency-Key header makes retries safe',
           params=(Param("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
                         "a retried submit with the same key returns the same job", where="header"),),
           request={"application/json": _SUBMIT},
           responses={202: json_answer("Queued", _JOB, "Location", "Retry-After"),
                      200: json_answer("Replayed: the job this Idempotency-Key made before", _JOB, "Location",
                                       "Idempotent-Replayed")},
           errors=(400, 404, 413, 415, 422, 503))
def submit_job(model: str) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()):
        raise ApiError(400, "bad_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters")
    _, records = records_body(("records",))
    check_entity_keys(records, plane().entity_key)
    job, created = plane().submit_job(records, key)
    location = url_for("jobs.get_job", job_id=str(job.id))
    if created:
        return _job_response(job, 202, Location=location)
    return _job_response(job, 200, Location=location, **{"Idempotent-Replayed": "true"})


@api.route("GET", "/v1/jobs/<job_id>", auth=PREDICT,
           summary="Async job status; predictions and model_version when done",
           responses={200: json_answer("The job", _JOB, "Retry-After")}, errors=(400, 404, 503))
def get_job(job_id: str) -> Response:
    return _job_response(plane().get_job(job_id), 200)


@api.route("DELETE", "/v1/jobs/<job_id>", auth=PREDICT,
           summary="Cancel a queued async job (409 once running or finished)",
           responses={200: json_answer("Cancelled", _JOB)}, errors=(400, 404, 409, 503))
def cancel_job(job_id: str) -> Response:
    return _job_response(plane().cancel_job(job_id), 200)
