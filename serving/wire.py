"""JSON over HTTP for the platform's own routes: reading bodies (with checks that name what is wrong) and
writing answers."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request

from serving.errors import ApiError


def mime_type() -> str:
    return (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


def loads(raw: bytes | str) -> Any:
    """json.loads, with nesting too deep for the parser as ValueError like any other malformed document."""
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def json_body() -> Any:
    """The request's JSON document; 415 for another content type, 400 for malformed JSON.
    A body over MAX_CONTENT_LENGTH raises werkzeug's 413 while reading."""
    if mime_type() != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"expected Content-Type application/json, got {request.headers.get('Content-Type')!r}")
    raw = request.get_data(cache=False)
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc


def records_body(allowed: tuple[str, ...]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A `{"records": [...], ...}` body (live predict and jobs): (the body, its records), each record an object."""
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", 'expected a JSON object {"records": [...]}')
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field '{unknown[0]}' (allowed: {', '.join(allowed)})")
    records = body.get("records")
    if not isinstance(records, list) or not records:
        raise ApiError(400, "invalid_records", "'records' must be a non-empty list of objects")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ApiError(400, "invalid_records", f"row {i}: each record must be an object", row=i)
    return body, records


def dumps(body: Any) -> str:
    """Strict JSON (RFC 8259): a NaN or Infinity token is refused here, never sent to a client."""
    return json.dumps(body, allow_nan=False)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response without Flask's provider machinery (measurably cheaper on the hot routes)."""
    return Response(dumps(body), status=status, headers=headers, mimetype="application/json")
