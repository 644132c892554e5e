"""Reading request bodies: content type, size and JSON checks that name what is wrong."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from serving.errors import ApiError


def mime_type() -> str:
    return (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


def json_body() -> Any:
    """The request's JSON document; 415 for another content type, 400 for malformed JSON.
    A body over MAX_CONTENT_LENGTH raises werkzeug's 413 while reading."""
    if mime_type() != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"expected Content-Type application/json, got {request.headers.get('Content-Type')!r}")
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc


def check_rows(n: int, limit: int) -> None:
    if n > limit:
        raise ApiError(413, "too_many_rows", f"{n} rows in one request; the limit is {limit} (SERVING_MAX_ROWS)")
