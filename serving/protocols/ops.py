"""Liveness and readiness: /healthz (process up) and /readyz (model loaded and database reachable)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from serving.state import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok", "model": state().spec.name})


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    st = state()
    checks = {"model_loaded": st.holder.current is not None, "database": st.db_ok()}
    body = {"ready": all(checks.values()), "checks": checks, "model_version": st.holder.version}
    return jsonify(body), (200 if body["ready"] else 503)
