"""One error shape for the platform's own routes: `{"error": {"code", "message", "column", "row"}}`.

`scoring.encoding.InputError` (and its subclasses) map to 4xx here so that the live endpoint and the async jobs
endpoint answer bad input identically. The standard protocols (/invocations, /v2) keep their own shapes and
convert from `ApiError` / `InputError` themselves.
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
    """JSON errors for ApiError, InputError and werkzeug HTTP errors; anything else is a logged 500."""

    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return error_response(exc)

    @app.errorhandler(InputError)
    def _input(exc: InputError) -> Response:
        return error_response(from_input_error(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return error_response(from_http_exception(exc))
