"""One error shape for the platform's own routes: `{"error": {"code", "message", "column", "row"}}`.

`scoring.encoding.InputError` (and its subclasses) map to 4xx here so that the live endpoint and the async jobs
endpoint answer bad input identically, and the services' failures (serving/failures.py) to their HTTP statuses
(`from_failure`, every HTTP protocol's one mapping). The standard protocols (/invocations, /v2) keep their own
shapes and render an `ApiError` themselves.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from scoring.encoding import (
    InputError,
    MissingColumnError,
    UnknownColumnError,
)
from serving.failures import (
    ExplainNotAllowed,
    Forbidden,
    ModelNotLoaded,
    NotFound,
    QueueUnavailable,
    Refused,
    ServingFailure,
    StoreUnavailable,
    TooMany,
    Unauthenticated,
    VersionNotLoaded,
)

# Structure of the request is wrong (no such column / a column too many / not a list of records) -> 400;
# the structure is right but a value cannot be scored (wrong type, unknown category, null) -> 422.
_STRUCTURAL = (MissingColumnError, UnknownColumnError)


class ApiError(Exception):
    """An error the API answers deliberately: HTTP status, a stable code and a message naming what is wrong."""

    def __init__(self, status: int, code: str, message: str, *, column: str | None = None,
                 row: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.column = column
        self.row = row
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "column": self.column, "row": self.row}}


# The body every error of the platform's own routes has (v1, jobs, operations), as documented in OpenAPI.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["code", "message", "column", "row"], "additionalProperties": False,
        "properties": {"code": {"type": "string", "description": "stable, machine-readable"},
                       "message": {"type": "string", "description": "names what is wrong"},
                       "column": {"type": ["string", "null"]}, "row": {"type": ["integer", "null"]}}}}}


def input_error_status(exc: InputError) -> int:
    if isinstance(exc, _STRUCTURAL) or type(exc) is InputError:
        return 400
    return 422


def from_input_error(exc: InputError) -> ApiError:
    return ApiError(input_error_status(exc), exc.kind, str(exc), column=exc.column, row=exc.row)


# A failure's HTTP status (Refused: by its code) and headers (the Retry-After hint of the ones that pass).
_STATUS: dict[type[ServingFailure], int] = {
    Unauthenticated: 401, Forbidden: 403, ModelNotLoaded: 503, VersionNotLoaded: 404, ExplainNotAllowed: 422,
    TooMany: 413, NotFound: 404, StoreUnavailable: 503, QueueUnavailable: 503}
_REFUSED = {"malformed_job_id": 400, "job_not_cancellable": 409, "idempotency_key_reused": 422, "invalid_input": 422}
_HEADERS: dict[type[ServingFailure], dict[str, str]] = {
    Unauthenticated: {"WWW-Authenticate": 'Bearer realm="serving"'}, ModelNotLoaded: {"Retry-After": "5"},
    StoreUnavailable: {"Retry-After": "5"}, QueueUnavailable: {"Retry-After": "1"}}


def from_failure(exc: ServingFailure) -> ApiError:
    kind = next(c for c in type(exc).__mro__ if c in _STATUS or c is Refused or c is ServingFailure)
    status = _REFUSED.get(exc.code, 400) if kind is Refused else _STATUS.get(kind, 400)
    return ApiError(status, exc.code, exc.message, column=exc.column, row=exc.row,
                    headers=dict(_HEADERS.get(kind, {})))


def error_response(err: ApiError) -> Response:
    resp = Response(json.dumps(err.body(), allow_nan=False), status=err.status, mimetype="application/json")
    resp.headers.update(err.headers)
    return resp


# Werkzeug's HTTP errors (404 route, 405 method, 413 body too large, ...) get the same JSON shape.
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               422: "invalid_input", 429: "too_many_requests", 503: "unavailable"}


def from_http_exception(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    # A 405 says which methods the URL takes (RFC 9110: the Allow header is required).
    headers = {k: v for k, v in exc.get_headers() if k == "Allow"}
    return ApiError(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name, headers=headers)


def register_error_handlers(app: Flask) -> None:
    """JSON errors for ApiError, InputError, ServingFailure and werkzeug HTTP errors; anything else is a logged 500."""

    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return error_response(exc)

    @app.errorhandler(InputError)
    def _input(exc: InputError) -> Response:
        return error_response(from_input_error(exc))

    @app.errorhandler(ServingFailure)
    def _failure(exc: ServingFailure) -> Response:
        return error_response(from_failure(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return error_response(from_http_exception(exc))
