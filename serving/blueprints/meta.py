"""Prometheus /metrics and the OpenAPI document /openapi.json (generated from the registered routes)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from serving.metrics import render

bp = Blueprint("meta", __name__)

# (path template, method) -> (summary, tag, protected by the bearer token)
DOCS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("/healthz", "get"): ("Process is up", "operations", False),
    ("/readyz", "get"): ("Model loaded and database reachable (503 otherwise)", "operations", False),
    ("/metrics", "get"): ("Prometheus metrics (all workers)", "operations", False),
    ("/openapi.json", "get"): ("This document", "operations", False),
    ("/v1/models/{model}", "get"): ("Model spec, loaded version, loaded at, signature, reload state", "v1", False),
    ("/v1/models/{model}/predictions/{entity_id}", "get"): (
        "Latest precomputed (batch) prediction of an entity, or ?date=YYYY-MM-DD; ?fallback=live scores the "
        "entity's latest features on a miss", "v1", True),
    ("/v1/models/{model}/predict", "post"): (
        'Live prediction: {"records": [...], "fallback"?: "live" | "precomputed"}', "v1", True),
    ("/invocations", "post"): ("MLflow scoring protocol (dataframe_split, dataframe_records, instances, inputs; "
                               "JSON or CSV)", "mlflow", True),
    ("/ping", "get"): ("MLflow scoring server health", "mlflow", False),
    ("/health", "get"): ("MLflow scoring server health", "mlflow", False),
    ("/version", "get"): ("MLflow version", "mlflow", False),
    ("/v2", "get"): ("OIP server metadata", "oip", False),
    ("/v2/health/live", "get"): ("OIP server live", "oip", False),
    ("/v2/health/ready", "get"): ("OIP server ready", "oip", False),
    ("/v2/models/{model}", "get"): ("OIP model metadata", "oip", False),
    ("/v2/models/{model}/versions/{version}", "get"): ("OIP model metadata of a version", "oip", False),
    ("/v2/models/{model}/ready", "get"): ("OIP model ready", "oip", False),
    ("/v2/models/{model}/versions/{version}/ready", "get"): ("OIP model version ready", "oip", False),
    ("/v2/models/{model}/infer", "post"): ("OIP inference (JSON tensors, binary tensor extension)", "oip", True),
    ("/v2/models/{model}/versions/{version}/infer", "post"): ("OIP inference on a version", "oip", True),
    ("/v1/models/{model}/jobs", "post"): ("Submit an async prediction job (Idempotency-Key)", "jobs", True),
    ("/v1/jobs/{job_id}", "get"): ("Async job status and result", "jobs", True),
    ("/v1/jobs/{job_id}", "delete"): ("Cancel a queued async job", "jobs", True),
}

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}, "column": {"type": ["string", "null"]},
    "row": {"type": ["integer", "null"]}}}}}


def _openapi_path(rule: str) -> str:
    return rule.replace("<", "{").replace(">", "}")


def routes(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, lower-case method) of every route the app serves (static files excluded)."""
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((_openapi_path(rule.rule), method.lower()))
    return out


def openapi_document(app: Flask, model: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, method in sorted(routes(app)):
        summary, tag, protected = DOCS.get((path, method), (f"{method.upper()} {path}", "other", False))
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in path.replace("}", "{").split("{")[1::2]]
        op: dict[str, Any] = {"summary": summary, "tags": [tag], "parameters": params,
                              "responses": {"200": {"description": "OK"},
                                            "4XX": {"description": "Bad request (the message names what is wrong)",
                                                    "content": {"application/json": {"schema": _ERROR}}}}}
        if protected:
            op["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method] = op
    return {"openapi": "3.1.0",
            "info": {"title": f"Model serving: {model}", "version": "0.1.0",
                     "description": "Precomputed lookups, live predictions, MLflow and Open Inference protocols."},
            "paths": paths,
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = render()
    return Response(body, status=200, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(current_app, current_app.extensions["serving"].spec.name))
