"""The generated OpenAPI document: valid OpenAPI 3.1, the spec's record schema, and every operation's answers
(one valid and one invalid request each, plus 401 for the protected ones) match what it documents.
In-process (tests/inprocess.py): no PostgreSQL, no MLflow."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from inprocess import RECORD, churn_spec, make_app
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from scoring import job_queue
from scoring.encoding import encode

TOKEN = "t0ken"
NAMES = churn_spec().feature_names
ROW = encode(churn_spec(), [{**RECORD, "region": "north", "data_usage_gb": 1.0}]).matrix[0].astype(float).tolist()
INFER = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(NAMES)], "data": ROW}]}


@pytest.fixture(scope="module")
def served(scorer):
    app, store = make_app(scorer)
    store.add_prediction(17, 0.25)
    day = store.latest_date()
    store.stored_reasons[(day, 17)] = [{"feature": "contract", "value": "month-to-month", "contribution": 0.81},
                                       {"feature": "tenure_months", "value": 3.0, "contribution": 0.42},
                                       {"feature": "region", "value": None, "contribution": -0.05}]
    return app, store


@pytest.fixture(scope="module")
def doc(served) -> dict[str, Any]:
    return served[0].test_client().get("/openapi.json").get_json()


def test_document_is_valid_openapi_31(doc):
    validate_spec(doc)
    assert doc["openapi"].startswith("3.1")


def test_record_schema_lists_every_feature_with_type_categories_and_nullability(doc):
    spec = churn_spec()
    record = doc["components"]["schemas"]["Record"]
    assert record["required"] == spec.feature_names and record["additionalProperties"] is False
    props = record["properties"]
    assert props["tenure_months"] == {"type": "integer"}
    assert props["monthly_charges"] == {"type": "number"}
    assert props["data_usage_gb"] == {"type": ["number", "null"]}
    assert props["plan"] == {"type": "string", "enum": ["basic", "standard", "premium"]}
    assert props["region"] == {"type": ["string", "null"], "enum": ["north", "south", "east", "west", "central", None]}
    assert set(props) == {*spec.feature_names, spec.source.entity_key}
    validator = Draft202012Validator(record)
    assert validator.is_valid(RECORD)
    assert not validator.is_valid({**RECORD, "plan": "gold"}) and not validator.is_valid({**RECORD, "x": 1})


def test_each_protocol_documents_the_error_body_it_answers(doc):
    schemas = doc["components"]["schemas"]
    assert schemas["V1Error"]["properties"]["error"]["required"] == ["code", "message", "column", "row"]
    assert schemas["MlflowError"]["required"] == ["error_code", "message"]
    assert schemas["OipError"]["properties"]["error"] == {"type": "string"}
    infer = doc["paths"]["/v2/models/{model}/infer"]["post"]["responses"]["400"]
    assert infer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OipError"}
    assert doc["paths"]["/invocations"]["post"]["responses"]["415"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/MlflowError"}


def _job(store) -> str:
    job, _ = store.submit_job("churn", job_queue.NewJob([RECORD]))
    return str(job.id)


def cases(store) -> dict[tuple[str, str], tuple[dict, dict | None]]:
    """(path, method) -> (a valid request, an invalid one or None when the operation takes no input)."""
    v = "/v1/models/churn"
    oip = "/v2/models/churn"
    return {
        ("/healthz", "get"): ({"path": "/healthz"}, None),
        ("/readyz", "get"): ({"path": "/readyz"}, None),
        ("/metrics", "get"): ({"path": "/metrics"}, None),
        ("/openapi.json", "get"): ({"path": "/openapi.json"}, None),
        ("/docs", "get"): ({"path": "/docs"}, None),
        ("/v1/models/{model}", "get"): ({"path": v}, {"path": "/v1/models/nope"}),
        ("/v1/models/{model}/predictions/{entity_id}", "get"): (
            {"path": f"{v}/predictions/17?explain=2"}, {"path": f"{v}/predictions/abc"}),
        ("/v1/models/{model}/predict", "post"): (
            {"path": f"{v}/predict", "json": {"records": [RECORD], "explain": {"top_k": 3}}},
            {"path": f"{v}/predict", "json": {"records": [{**RECORD, "plan": "gold"}]}}),
        ("/v1/models/{model}/jobs", "post"): (
            {"path": f"{v}/jobs", "json": {"records": [RECORD]}, "headers": {"Idempotency-Key": "k1"}},
            {"path": f"{v}/jobs", "json": {"rows": [RECORD]}}),
        ("/v1/models/{model}/jobs/bulk", "post"): (
            {"path": f"{v}/jobs/bulk", "json": {"jobs": [{"records": [RECORD], "idempotency_key": "b1"},
                                                          {"records": [RECORD, RECORD]}]}},
            {"path": f"{v}/jobs/bulk", "json": {"jobs": [{"records": [RECORD]},
                                                          {"records": [{**RECORD, "plan": "gold"}]}]}}),
        ("/v1/jobs/{job_id}", "get"): ({"path": f"/v1/jobs/{_job(store)}"}, {"path": "/v1/jobs/nope"}),
        ("/v1/jobs/{job_id}", "delete"): ({"path": f"/v1/jobs/{_job(store)}"}, {"path": f"/v1/jobs/{uuid.uuid4()}"}),
        ("/ping", "get"): ({"path": "/ping"}, None),
        ("/health", "get"): ({"path": "/health"}, None),
        ("/version", "get"): ({"path": "/version"}, None),
        ("/invocations", "post"): (
            {"path": "/invocations", "json": {"dataframe_split": {"columns": NAMES, "data": [ROW]}}},
            {"path": "/invocations", "data": "<a/>", "content_type": "application/xml"}),
        ("/v2", "get"): ({"path": "/v2"}, None),
        ("/v2/health/live", "get"): ({"path": "/v2/health/live"}, None),
        ("/v2/health/ready", "get"): ({"path": "/v2/health/ready"}, None),
        ("/v2/models/{model}", "get"): ({"path": oip}, {"path": "/v2/models/nope"}),
        ("/v2/models/{model}/versions/{version}", "get"): ({"path": f"{oip}/versions/1"},
                                                           {"path": f"{oip}/versions/9"}),
        ("/v2/models/{model}/ready", "get"): ({"path": f"{oip}/ready"}, {"path": "/v2/models/nope/ready"}),
        ("/v2/models/{model}/versions/{version}/ready", "get"): (
            {"path": f"{oip}/versions/1/ready"}, {"path": f"{oip}/versions/9/ready"}),
        ("/v2/models/{model}/infer", "post"): ({"path": f"{oip}/infer", "json": INFER},
                                               {"path": f"{oip}/infer", "json": {"inputs": []}}),
        ("/v2/models/{model}/versions/{version}/infer", "post"): (
            {"path": f"{oip}/versions/1/infer", "json": INFER}, {"path": f"{oip}/versions/9/infer", "json": INFER}),
    }


def send(client, method: str, req: dict, **headers: str):
    req = dict(req)
    path = req.pop("path")
    return client.open(path, method=method.upper(), headers={**req.pop("headers", {}), **headers}, **req)


def check_answer(doc: dict, op: dict, resp, where: str) -> None:
    """The status is documented for the operation, and the body is of the documented media type and schema."""
    documented = op["responses"].get(str(resp.status_code))
    assert documented is not None, f"{where}: status {resp.status_code} not documented: {resp.data[:300]!r}"
    for header in documented.get("headers", {}):
        if header != "Retry-After":  # a hint, only while a job is pending
            assert header in resp.headers, f"{where}: documented header {header} missing"
    content = documented.get("content", {})
    assert resp.mimetype in content, f"{where}: {resp.mimetype} not among {list(content)}"
    schema = content[resp.mimetype].get("schema")
    if schema is not None and resp.mimetype == "application/json":
        # "$ref"s point into the document's components
        validator = Draft202012Validator({**schema, "components": doc["components"]})
        errors = [e.message for e in validator.iter_errors(json.loads(resp.data))]
        assert not errors, f"{where}: body does not match the document: {errors[:3]} in {resp.data[:300]!r}"


def test_every_operation_answers_as_documented(served, doc):
    app, store = served
    client = app.test_client()
    table = cases(store)
    operations = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert set(table) == operations, "every documented operation needs a valid and an invalid request here"
    for (path, method), (valid, invalid) in table.items():
        op = doc["paths"][path][method]
        resp = send(client, method, valid)
        assert resp.status_code < 300, (path, method, resp.status_code, resp.data[:300])
        check_answer(doc, op, resp, f"{method} {path} (valid)")
        if invalid is not None:
            resp = send(client, method, invalid)
            assert resp.status_code >= 400, (path, method, resp.status_code)
            check_answer(doc, op, resp, f"{method} {path} (invalid)")


def test_not_ready_answers_are_documented(doc):
    """No version loaded and the database down: readiness, /ping and OIP ready answer as documented."""
    app, store = make_app(None)
    store.up = False
    client = app.test_client()
    for path in ("/readyz", "/ping", "/health", "/v2/health/ready", "/v2/models/churn/ready"):
        resp = client.get(path)
        assert resp.status_code in (404, 503), path
        check_answer(doc, doc["paths"][path.replace("churn", "{model}")]["get"], resp, path)
    for path, body in (("/v1/models/churn/predict", {"records": [RECORD]}), ("/v2/models/churn/infer", INFER)):
        resp = client.post(path, json=body)
        assert resp.status_code == 503
        check_answer(doc, doc["paths"][path.replace("churn", "{model}")]["post"], resp, path)


def test_protected_operations_answer_401_as_documented(scorer, doc):
    app, store = make_app(scorer, api_token=TOKEN)
    store.add_prediction(17, 0.25)
    client = app.test_client()
    protected = 0
    for (path, method), (valid, _) in cases(store).items():
        op = doc["paths"][path][method]
        if op["security"]:
            protected += 1
            resp = send(client, method, valid)
            assert resp.status_code == 401, (path, method)
            check_answer(doc, op, resp, f"{method} {path} (no token)")
            assert send(client, method, valid, Authorization=f"Bearer {TOKEN}").status_code < 300, (path, method)
        else:
            assert send(client, method, valid).status_code < 300, (path, method)  # public: no token needed
    assert protected == 10  # lookup, predict, 4 job routes (submit, bulk, get, cancel), /invocations, 2 OIP, metrics
