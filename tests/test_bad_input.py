"""Bodies the app cannot use get a 4xx in their protocol's shape, never a 5xx, with a message naming the field,
row and value as the client wrote it; every response is strict JSON. In-process (tests/inprocess.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from inprocess import RECORD, churn_spec, make_app, train_scorer
from prometheus_client import REGISTRY

NAMES = churn_spec().feature_names
ROW = [1.0] * len(NAMES)
V1, JOBS, MLFLOW, OIP = "/v1/models/churn/predict", "/v1/models/churn/jobs", "/invocations", "/v2/models/churn/infer"


@pytest.fixture(scope="module")
def client():
    app, store = make_app(train_scorer(churn_spec()))
    store.add_prediction(17, 0.5)
    return app.test_client()


def _reject_constant(token: str) -> Any:
    raise AssertionError(f"response is not strict JSON: {token} token")


def strict_json(raw: bytes) -> Any:
    return json.loads(raw, parse_constant=_reject_constant)


def message(path: str, body: Any) -> str:
    if path == MLFLOW:
        return body["message"]
    return body["error"] if path.startswith("/v2") else body["error"]["message"]


def send(client, path: str, body: Any) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    resp = client.post(path, data=raw, content_type="application/json")
    return resp.status_code, strict_json(resp.data)


def rec(**changes: Any) -> dict[str, Any]:
    return {**RECORD, **changes}


def tensor(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(NAMES)], "data": ROW, **changes}]}


DEEP = b'{"records": ' + b"[" * 5000 + b"]" * 5000 + b"}"

# (protocol path, body, words the message must contain)
CASES = {
    # unexpected structure
    "v1 records not a list": (V1, {"records": {"a": 1}}, ["records"]),
    "v1 record not an object": (V1, {"records": [1]}, ["row 0", "object"]),
    "v1 nested too deeply": (V1, DEEP, ["nested"]),
    "v1 fallback a list": (V1, {"records": [RECORD], "fallback": ["live"]}, ["fallback", '["live"]']),
    "v1 feature a list": (V1, {"records": [rec(tenure_months=[1])]}, ["row 0", "tenure_months", "[1]"]),
    "v1 category an object": (V1, {"records": [rec(plan={"a": 1})]}, ["plan"]),
    "jobs records not a list": (JOBS, {"records": "x"}, ["records"]),
    "jobs nested too deeply": (JOBS, b'{"records": ' + b"[" * 5000 + b"]" * 5000 + b"}", ["nested"]),
    "mlflow split not an object": (MLFLOW, {"dataframe_split": [1]}, []),
    "mlflow nested too deeply": (MLFLOW, b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", ["nested"]),
    "mlflow instances a string": (MLFLOW, {"instances": "x"}, []),
    "oip inputs not objects": (OIP, {"inputs": [5]}, ["inputs"]),
    "oip nested too deeply": (OIP, b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", ["nested"]),
    # numbers outside what a feature (float32 matrix) or a 64-bit column can hold
    "v1 int beyond float": (V1, {"records": [rec(tenure_months=10**30)]}, ["row 0", "tenure_months", "10" * 1]),
    "v1 negative int beyond float": (V1, {"records": [rec(tenure_months=-(10**400))]}, ["tenure_months"]),
    "v1 float beyond float32": (V1, {"records": [rec(monthly_charges=1e39)]}, ["monthly_charges", "1e+39"]),
    "jobs int beyond float": (JOBS, {"records": [rec(tenure_months=10**30)]}, ["tenure_months"]),
    "jobs float beyond float32": (JOBS, {"records": [rec(data_usage_gb=-1e300)]}, ["data_usage_gb"]),
    "mlflow float beyond float32": (MLFLOW, {"dataframe_split": {"columns": NAMES, "data": [[1e300] * len(NAMES)]}},
                                    ["tenure_months"]),
    "mlflow inputs huge int": (MLFLOW, {"inputs": {n: [10**30] for n in NAMES}}, ["tenure_months"]),
    "oip 2-D huge": (OIP, tensor(data=[1e300] * len(NAMES)), ["tenure_months", "1e+300"]),
    "oip INT64 per feature beyond float": (OIP, {"inputs": [{"name": n, "datatype": "INT64", "shape": [1],
                                                              "data": [10**30]} for n in NAMES]}, ["tenure_months"]),
    "oip shape beyond any body": (OIP, tensor(shape=[2**40, 2**40]), ["input"]),
    # OIP fields of the wrong type
    "oip shape a string": (OIP, tensor(shape="x"), ["shape", '"x"']),
    "oip shape of booleans": (OIP, tensor(shape=[True, len(NAMES)]), ["shape"]),
    "oip name a number": (OIP, tensor(name=5), ["name", "5"]),
    "oip datatype a number": (OIP, tensor(datatype=5), ["datatype"]),
    "oip parameters a string": (OIP, tensor(parameters="x"), ["parameters"]),
    "oip binary_data_size a string": (OIP, tensor(parameters={"binary_data_size": "x"}), ["binary_data_size"]),
    "oip binary_data_size negative": (OIP, tensor(parameters={"binary_data_size": -5}), ["binary_data_size"]),
    "oip outputs a string": (OIP, {**tensor(), "outputs": "x"}, ["outputs"]),
    "oip output name a list": (OIP, {**tensor(), "outputs": [{"name": ["score"]}]}, ["output", '["score"]']),
    "oip output parameters a string": (OIP, {**tensor(), "outputs": [{"name": "score", "parameters": "x"}]},
                                       ["parameters"]),
    "oip request parameters a list": (OIP, {**tensor(), "parameters": [1]}, ["parameters"]),
    "oip binary_data_output a string": (OIP, {**tensor(), "parameters": {"binary_data_output": "yes"}},
                                        ["binary_data_output", '"yes"']),
    "oip id a number": (OIP, {**tensor(), "id": 5}, ["id"]),
    "oip id NaN (echoed back)": (OIP, {**tensor(), "id": float("nan")}, ["id", "NaN"]),
    # entity keys PostgreSQL cannot store (and NaN, which would be echoed back as a non-JSON token)
    "v1 entity key NaN": (V1, {"records": [rec(customer_id=float("nan"))]}, ["row 0", "customer_id", "NaN"]),
    "v1 entity key NUL string": (V1, {"records": [rec(customer_id="\u0000")]}, ["customer_id", "\\u0000"]),
    "v1 entity key beyond bigint": (V1, {"records": [rec(customer_id=2**63)]}, ["customer_id", str(2**63)]),
    "v1 cache-first entity key beyond bigint": (V1, {"records": [rec(customer_id=10**30)], "fallback": "precomputed"},
                                                ["customer_id"]),
    "jobs entity key NUL string": (JOBS, {"records": [rec(customer_id="a\u0000b")]}, ["row 0", "customer_id"]),
    "jobs entity key a float": (JOBS, {"records": [RECORD, rec(customer_id=1.5)]}, ["row 1", "customer_id", "1.5"]),
    "jobs entity key an object": (JOBS, {"records": [rec(customer_id={"id": 1})]}, ["customer_id", '{"id": 1}']),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_body_is_a_4xx_naming_what_is_wrong(client, case):
    path, body, words = CASES[case]
    status, answer = send(client, path, body)
    assert 400 <= status < 500, (status, answer)
    text = message(path, answer)
    assert "np." not in text and "Traceback" not in text, text  # no Python internals
    for word in words:
        assert word in text, (word, text)


def test_v1_error_names_the_field_and_row(client):
    status, answer = send(client, V1, {"records": [RECORD, rec(customer_id="x")]})
    assert status == 422 and answer["error"]["column"] == "customer_id" and answer["error"]["row"] == 1
    status, answer = send(client, V1, {"records": [RECORD, rec(tenure_months=3.5)]})
    assert status == 422 and answer["error"]["column"] == "tenure_months" and answer["error"]["row"] == 1
    assert answer["error"]["message"] == "row 1: feature 'tenure_months' expects an integer, got 3.5"


def test_values_come_back_as_the_client_wrote_them(client):
    """A value converted by numpy on the way in is shown as a plain number, not np.float64(...)."""
    split = {"dataframe_split": {"columns": NAMES, "data": [[3.5, *ROW[1:]]]}}
    status, answer = send(client, MLFLOW, split)
    assert status == 400 and answer["message"].endswith("expects an integer, got 3.5"), answer


def test_good_inputs_still_answer_and_the_entity_key_is_echoed(client):
    status, answer = send(client, V1, {"records": [rec(customer_id=2**63 - 1), rec(customer_id=None)]})
    assert status == 200 and answer["predictions"][0]["customer_id"] == 2**63 - 1
    assert "customer_id" not in answer["predictions"][1]
    status, answer = send(client, V1, {"records": [rec(customer_id=17)], "fallback": "precomputed"})
    assert status == 200 and answer["predictions"][0]["source"] == "precomputed"
    status, answer = send(client, OIP, {**tensor(), "id": "req-1", "parameters": {"binary_data_output": False}})
    assert status == 200 and answer["id"] == "req-1"


@pytest.mark.parametrize("path", ["/v1/models/churn/predictions/1_000", "/v1/models/churn/predictions/%201",
                                  "/v1/models/churn/predictions/\u0661\u0662", "/v1/models/churn/predictions/1e3",
                                  "/v1/models/churn/predictions/99999999999999999999"])
def test_lookup_key_must_be_a_plain_64_bit_integer(client, path):
    resp = client.get(path)
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_entity_id", resp.json
    assert resp.json["error"]["column"] == "customer_id"


def test_405_names_the_allowed_methods(client):
    for method in ("PUT", "DELETE", "PATCH"):
        resp = client.open(V1, method=method)
        assert resp.status_code == 405 and "POST" in resp.headers["Allow"].split(", "), resp.headers
        assert resp.json["error"]["code"] == "method_not_allowed"
    assert set(client.put("/v2/models/churn/infer").headers["Allow"].split(", ")) >= {"POST"}
    assert "GET" in client.post("/v1/models/churn/predictions/1").headers["Allow"]


def _requests(**labels: str) -> float:
    return REGISTRY.get_sample_value("serving_requests_total", {"model": "churn", **labels}) or 0.0


def test_metric_labels_come_from_a_fixed_set(client):
    """Arbitrary methods and paths do not create time series: they fall into `other` / `unmatched`."""
    before = _requests(route="unmatched", method="other", status="405")
    for i in range(20):
        client.open(V1, method=f"BREW{i}")
    assert _requests(route="unmatched", method="other", status="405") == before + 20
    for i in range(5):
        client.get(f"/nowhere/{i}")
    methods = {s.labels["method"] for m in REGISTRY.collect() if m.name == "serving_requests"
               for s in m.samples if s.labels.get("model") == "churn"}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    routes = {s.labels["route"] for m in REGISTRY.collect() if m.name == "serving_requests"
              for s in m.samples if s.labels.get("model") == "churn"}
    assert not any(r.startswith("/nowhere") for r in routes), routes
