"""Structured JSON access logs for gunicorn (one JSON object per request, with the request id)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from gunicorn.glogging import Logger


class JsonAccessLogger(Logger):
    """gunicorn's logger with `access()` writing JSON (values are escaped, unlike access_log_format)."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: dt.timedelta) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict or self.cfg.syslog):
            return
        headers = dict(resp.headers) if isinstance(resp.headers, dict) else {k.lower(): v for k, v in resp.headers}
        record = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "request_id": headers.get("x-request-id") or headers.get("X-Request-ID"),
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or None,
            "status": int(str(resp.status).split(None, 1)[0]),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "user_agent": environ.get("HTTP_USER_AGENT"),
        }
        try:
            self.access_log.info(json.dumps(record))
        except Exception:
            self.exception("failed to write the access log")
