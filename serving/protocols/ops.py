"""Operations: liveness, readiness, the OpenAPI document and its Swagger UI (public), Prometheus metrics (scope
`metrics` once the deployment has tokens: they describe its internals)."""

from __future__ import annotations

from flask import Response, current_app
from flask_swagger_ui import get_swaggerui_blueprint

from serving.dataplane import plane
from serving.errors import ERROR_SCHEMA, error_response
from serving.metrics import render
from serving.routes import PUBLIC, Answer, Protocol, Scope, json_answer
from serving.wire import json_response

api = Protocol("operations", "Health, readiness, metrics and this document", ERROR_SCHEMA, error_response)

OPENAPI_KEY = "openapi.json"  # app.extensions: the document, rendered once at start-up
DOCS_URL = "/docs"
# Swagger UI from the pinned flask-swagger-ui package (its own static files; nothing fetched from elsewhere).
swagger_ui = get_swaggerui_blueprint(DOCS_URL, "/openapi.json", config={"app_name": "Model serving API"},
                                     blueprint_name="swagger_ui")
api.mount(swagger_ui, auth=PUBLIC)

_READY = {"type": "object", "required": ["ready", "checks", "model_version"],
          "properties": {"ready": {"type": "boolean"}, "model_version": {"type": ["string", "null"]},
                         "checks": {"type": "object", "properties": {"model_loaded": {"type": "boolean"},
                                                                     "database": {"type": "boolean"}}}}}


@api.route("GET", "/healthz", auth=PUBLIC, summary="Process is up",
           responses={200: json_answer("Up", {"type": "object", "required": ["status", "model"]})})
def healthz() -> Response:
    return json_response({"status": "ok", "model": plane().spec.name})


@api.route("GET", "/readyz", auth=PUBLIC, summary="Model loaded and database reachable (503 otherwise)",
           responses={200: json_answer("Ready", _READY), 503: json_answer("Not ready", _READY)})
def readyz() -> Response:
    dp = plane()
    checks = {"model_loaded": dp.holder.current is not None, "database": dp.db_ok()}
    body = {"ready": all(checks.values()), "checks": checks, "model_version": dp.holder.version}
    return json_response(body, 200 if body["ready"] else 503)


@api.route("GET", "/metrics", auth=Scope("metrics"), summary="Prometheus metrics (all workers)",
           responses={200: Answer("Prometheus text format", {"text/plain": {"type": "string"}})})
def metrics() -> Response:
    body, content_type = render()
    return Response(body, status=200, content_type=content_type)


@api.route("GET", "/openapi.json", auth=PUBLIC, summary="This document (OpenAPI 3.1)",
           responses={200: json_answer("The OpenAPI document", {"type": "object", "required": ["openapi"]})})
def openapi() -> Response:
    return Response(current_app.extensions[OPENAPI_KEY], mimetype="application/json")


@api.route("GET", DOCS_URL, auth=PUBLIC, summary="This document in Swagger UI",
           responses={200: Answer("An HTML page", {"text/html": {"type": "string"}})})
def docs() -> Response:
    return current_app.view_functions["swagger_ui.show"]()
