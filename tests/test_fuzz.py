"""Fuzzing every documented operation of a real gunicorn with schemathesis, driven by the app's own generated
OpenAPI document (GET /openapi.json): positive and negative data, the model path fixed to the served model.
Checks: no 5xx, every status and content type documented, every body matching its documented schema.
Bounded: a few dozen examples per operation (about a minute in all)."""

from __future__ import annotations

import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stack.pg import free_port
from stack.services import stop_process
from testing.servers import start_gunicorn

MODEL = "churn"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 25
CONFIG = {"generation": {"mode": "all", "max-examples": MAX_EXAMPLES},
          "phases": {"stateful": {"enabled": False}}}


@pytest.fixture(scope="module")
def served_url(db_url, trained_models, demo_features, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    proc = start_gunicorn(MODEL, port, logdir / "gunicorn.log", env={
        "DATABASE_URL": db_url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "SERVING_WORKERS": "2"})
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)
    log = (logdir / "gunicorn.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]  # nothing the fuzzer sent made the app fail


def _document() -> dict:
    from scoring.spec import load_spec
    from serving.openapi import document
    from serving.protocols import PROTOCOLS

    return document(load_spec(MODEL), PROTOCOLS)


# The document the app generates from its route declarations (the gunicorn's GET /openapi.json is checked to be
# this very document): built here so that pytest can list one case per operation before the server starts.
DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict(CONFIG))


def test_the_served_document_is_the_one_fuzzed(served_url):
    assert requests.get(f"{served_url}/openapi.json", timeout=10).json() == json.loads(json.dumps(DOCUMENT))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, served_url):
    if "model" in (case.path_parameters or {}):
        case.path_parameters["model"] = MODEL  # the model path is fixed to the served model
    case.call_and_validate(base_url=served_url, checks=CHECKS, timeout=30)
