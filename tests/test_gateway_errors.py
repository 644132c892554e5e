"""Every answer the gateway (a real nginx, its config from stack/gateway_conf.py) makes itself, walked path prefix by
path prefix: each must be in the error shape of the protocol its path belongs to (the platform's /v1 object,
Open Inference's {"error": "<string>"} under /v2, MLflow's {"error_code", "message"} under /models/<m>/ and
/endpoints/<m>/), so a
client of that protocol can read it.

No replica runs here: that is the point. churn's replicas are stopped (a closed port and a missing Unix socket:
every connect is refused, 502), spend's replica accepts connections and never answers (504 after the 1 s read
timeout). The answers made by running replicas (and by tritonclient against them) are in tests/test_gateway.py.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from stack.gateway import Upstreams, start_standalone
from stack.services import stop_process
from testing.ports import free_run

BIG = b"x" * (1_048_576 + 10)  # over SERVING_MAX_BODY_BYTES' default


@dataclass(frozen=True)
class Gateway:
    url: str
    root: Path


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    root = Path(tempfile.mkdtemp(prefix="gateway-errors-"))
    root.chmod(0o755)
    base = free_run(3)
    dead = f"127.0.0.1:{base + 1}"  # nothing listens there
    hanging = socket.socket()  # listens (the kernel completes the handshake), never accepts nor answers
    hanging.bind(("127.0.0.1", base + 2))
    hanging.listen(64)
    routes = {"churn": Upstreams([dead, f"unix:{root / 'gone.sock'}"], [dead]),
              "spend": Upstreams([f"127.0.0.1:{base + 2}"])}
    proc = start_standalone(routes, base, root / "gw", root / "gw.log", read_timeout_s=1)
    try:
        yield Gateway(f"http://127.0.0.1:{base}", root)
    finally:
        stop_process(proc)
        hanging.close()
        shutil.rmtree(root, ignore_errors=True)


def _v1(body: dict, status: int) -> str:
    codes = {404: "not_found", 413: "payload_too_large", 502: "bad_gateway", 504: "gateway_timeout"}
    assert set(body) == {"error"} and body["error"]["code"] == codes[status], body
    assert {"column", "row"} <= set(body["error"]), body
    return body["error"]["message"]


def _v2(body: dict, status: int) -> str:
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


def _mlflow(body: dict, status: int) -> str:
    codes = {404: "RESOURCE_DOES_NOT_EXIST", 413: "BAD_REQUEST", 502: "TEMPORARILY_UNAVAILABLE",
             504: "DEADLINE_EXCEEDED"}
    assert set(body) == {"error_code", "message"} and body["error_code"] == codes[status], body
    return body["message"]


SHAPES = {"v1": _v1, "v2": _v2, "mlflow": _mlflow}

# (method, path, the protocol whose shape the answer has): every prefix the gateway routes
NOT_FOUND = [
    ("GET", "/", "v1"), ("GET", "/nothing/here", "v1"), ("GET", "/v1/", "v1"), ("GET", "/v1/other", "v1"),
    ("GET", "/v1/models/nope/predictions/1", "v1"), ("POST", "/v1/models/nope/predict", "v1"),
    ("POST", "/v1/models/nope/jobs", "v1"), ("GET", "/v1/models/churnx", "v1"),
    ("GET", "/v2/", "v2"), ("GET", "/v2/repository/index", "v2"), ("GET", "/v2/models/nope", "v2"),
    ("GET", "/v2/models/nope/ready", "v2"), ("POST", "/v2/models/nope/infer", "v2"),
    ("GET", "/v2/models/nope/versions/3", "v2"), ("POST", "/v2/models/nope/versions/3/infer", "v2"),
    ("GET", "/models/", "mlflow"), ("POST", "/models/nope/invocations", "mlflow"),
    ("GET", "/models/nope/ping", "mlflow"),
    ("POST", "/endpoints/nope/invocations", "mlflow"), ("GET", "/endpoints/churn/other", "mlflow"),
]
# churn's replicas are all stopped
UNREACHABLE = [
    ("GET", "/v1/models/churn", "v1"), ("GET", "/v1/models/churn/predictions/1", "v1"),
    ("POST", "/v1/models/churn/predict", "v1"), ("POST", "/v1/models/churn/jobs", "v1"),
    ("POST", "/v1/models/churn/jobs/bulk", "v1"),
    ("GET", "/v2/models/churn", "v2"), ("GET", "/v2/models/churn/ready", "v2"),
    ("POST", "/v2/models/churn/infer", "v2"),
    ("GET", "/v2/models/churn/versions/1", "v2"), ("POST", "/v2/models/churn/versions/1/infer", "v2"),
    ("POST", "/models/churn/invocations", "mlflow"), ("GET", "/models/churn/ping", "mlflow"),
    ("POST", "/endpoints/churn/invocations", "mlflow"),
]
# spend's replica never answers
SILENT = [("POST", "/v1/models/spend/predict", "v1"), ("POST", "/v2/models/spend/infer", "v2"),
          ("POST", "/models/spend/invocations", "mlflow")]
TOO_LARGE = [("POST", "/v1/models/churn/predict", "v1"), ("POST", "/v1/models/churn/jobs", "v1"),
             ("POST", "/v1/models/nope/predict", "v1"), ("POST", "/v2/models/churn/infer", "v2"),
             ("POST", "/v2/models/churn/versions/1/infer", "v2"), ("POST", "/models/churn/invocations", "mlflow")]


def _answer(gateway: Gateway, method: str, path: str, data: bytes = b"{}", **headers: str) -> requests.Response:
    resp = requests.request(method, gateway.url + path, data=data if method == "POST" else None, timeout=10,
                            headers={"Content-Type": "application/json", **headers})
    assert resp.headers["Content-Type"] == "application/json", (path, resp.headers)
    assert resp.headers["X-Request-ID"], path
    return resp


@pytest.mark.parametrize(("method", "path", "protocol"), NOT_FOUND)
def test_unknown_route_or_model(gateway: Gateway, method: str, path: str, protocol: str) -> None:
    resp = _answer(gateway, method, path)
    assert resp.status_code == 404, (path, resp.text)
    message = SHAPES[protocol](resp.json(), 404)
    if "/nope" in path or "churnx" in path:  # the unknown model is named, and what is served instead
        assert ("'nope'" in message or "'churnx'" in message) and "churn, spend" in message, message


def test_a_name_that_cannot_be_echoed_safely_is_not(gateway: Gateway) -> None:
    resp = _answer(gateway, "GET", '/v2/models/a"b/ready')
    assert resp.status_code == 404
    assert '"' not in _v2(resp.json(), 404)


@pytest.mark.parametrize(("method", "path", "protocol"), UNREACHABLE)
def test_no_replica_reachable(gateway: Gateway, method: str, path: str, protocol: str) -> None:
    resp = _answer(gateway, method, path)
    assert resp.status_code == 502, (path, resp.text)
    assert "no replica answered" in SHAPES[protocol](resp.json(), 502)


def test_a_submit_with_an_idempotency_key_fails_the_same_way(gateway: Gateway) -> None:
    resp = _answer(gateway, "POST", "/v1/models/churn/jobs", **{"Idempotency-Key": "k-1"})
    assert resp.status_code == 502 and _v1(resp.json(), 502)


@pytest.mark.parametrize(("method", "path", "protocol"), SILENT)
def test_no_replica_answers_in_time(gateway: Gateway, method: str, path: str, protocol: str) -> None:
    resp = _answer(gateway, method, path)
    assert resp.status_code == 504, (path, resp.text)
    assert "within 1s" in SHAPES[protocol](resp.json(), 504)


def test_job_reads_go_to_any_job_replica(gateway: Gateway) -> None:
    resp = _answer(gateway, "GET", "/v1/jobs/4f0d6c8e-0000-0000-0000-000000000000")
    assert resp.status_code in (502, 504), resp.text  # churn's refuses, spend's is silent: whichever was last
    _v1(resp.json(), resp.status_code)


@pytest.mark.parametrize(("method", "path", "protocol"), TOO_LARGE)
def test_body_over_the_limit(gateway: Gateway, method: str, path: str, protocol: str) -> None:
    resp = _answer(gateway, method, path, data=BIG)
    assert resp.status_code == 413, (path, resp.text)
    assert "SERVING_MAX_BODY_BYTES" in SHAPES[protocol](resp.json(), 413)


def test_server_routes_are_answered_by_the_gateway(gateway: Gateway) -> None:
    live = _answer(gateway, "GET", "/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    meta = _answer(gateway, "GET", "/v2")
    assert meta.status_code == 200 and meta.json()["name"] == "model-serving-platform"
    assert "binary_tensor_data" in meta.json()["extensions"] and meta.json()["version"]
    # ready means every model has a ready replica: churn, the first asked, has none
    ready = _answer(gateway, "GET", "/v2/health/ready")
    assert ready.status_code == 503 and _v2(ready.json(), 503) == "model 'churn' has no ready replica"
