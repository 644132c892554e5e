"""Per-request plumbing: request id (X-Request-ID in and out), metrics per route/status, bearer-token auth."""

from __future__ import annotations

import hmac
import re
import time
import uuid

from flask import Flask, Response, g, request

from serving.errors import ApiError
from serving.metrics import LATENCY, REQUESTS

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def register_middleware(app: Flask, model: str) -> None:
    children: dict[tuple[str, str, str], tuple] = {}  # label lookups cached: they cost more than the inc

    def metrics_for(route: str, method: str, status: str) -> tuple:
        key = (route, method, status)
        pair = children.get(key)
        if pair is None:
            pair = children[key] = (REQUESTS.labels(model, route, method, status),
                                    LATENCY.labels(model, route, status))
        return pair

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        # A caller's id is kept (to follow a request across services) only if it is safe to log and echo.
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"  # templates, never raw paths: bounded labels
        count, latency = metrics_for(route, request.method, str(resp.status_code))
        count.inc()
        started = g.get("started")
        if started is not None:
            latency.observe(time.perf_counter() - started)
        return resp


def require_token(token: str | None) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <token>` (no-op when no token is set)."""
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized",
                       "missing or wrong bearer token: send 'Authorization: Bearer <SERVING_API_TOKEN>'",
                       headers={"WWW-Authenticate": 'Bearer realm="serving"'})
