"""The gateway (a real nginx) in front of real gunicorn replicas, brought up by `make up`'s own code (stack.up)
against the session's PostgreSQL and MLflow: routing by model, /invocations per model, request ids in both logs,
the edge body limit, slow clients, a SIGKILLed replica under load and a rolling restart (no failed request).

One stack for the whole module (2 replicas x 2 models); the tests that break replicas run last and leave the
stack whole again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from scoring.batch import run_batch
from stack.config import StackConfig
from stack.gateway import access_log_path, replicas
from stack.procs import alive, read_pid
from stack.rolling import rolling_restart
from stack.up import down, up
from testing.ports import free_run

pytestmark = pytest.mark.integration

MODELS = ("churn", "spend")


@pytest.fixture(scope="module")
def stack(db_url: str, mlflow_server: str, trained_models: dict[str, str], demo_features: dt.date,
          specs) -> Iterator[StackConfig]:
    for model in MODELS:
        run_batch(specs[model], demo_features, f"gw_{uuid.uuid4().hex[:8]}", url=db_url)
    home = Path(tempfile.mkdtemp(prefix="gateway-test-"))
    home.chmod(0o755)  # nginx's workers (nobody when run as root) write their temp files inside it
    # 2 sync replicas and 1 threaded job replica per model; the sync ones' gRPC ports where the app serves gRPC
    grpc_ports = {"replica_grpc_port": free_run(4)} if "replica_grpc_port" in {
        f.name for f in dataclasses.fields(StackConfig)} else {}
    cfg = StackConfig(home=home, external_db_url=db_url, mlflow_port=int(mlflow_server.rsplit(":", 1)[1]),
                      serving_port=free_run(1), grpc_port=free_run(1), replica_port=free_run(6), replicas=2,
                      job_replicas=1, components=frozenset({"serving", "gateway"}), **grpc_ports)
    log: list[str] = []
    try:
        up(cfg, out=log.append)
        for rep in replicas(cfg, list(MODELS)):  # every replica has its model loaded
            _wait_ready(f"http://{rep.address}")
        yield cfg
    finally:
        down(cfg, out=log.append)
        print("\n".join(log))
        shutil.rmtree(home, ignore_errors=True)


def _wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {timeout}s")


def _features(specs, model: str, n: int = 2) -> list[dict]:
    from scoring.db import connect

    spec = specs[model]
    cols = ", ".join(spec.feature_names)
    with connect() as conn:
        cur = conn.execute(f"SELECT {cols} FROM features.customer_daily ORDER BY customer_id, snapshot_date "
                           f"LIMIT {n}")
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return json.loads(json.dumps(rows, default=float))  # numeric columns come back as Decimal


def _post(url: str, body: object, **headers: str) -> requests.Response:
    return requests.post(url, data=json.dumps(body), headers={"Content-Type": "application/json", **headers},
                         timeout=30)


# ---------------------------------------------------------------- routing


def test_routes_by_model(stack: StackConfig, specs) -> None:
    gw = stack.gateway_url
    for model in MODELS:
        info = requests.get(f"{gw}/v1/models/{model}", timeout=10)
        assert info.status_code == 200 and info.json()["model"] == model, info.text
        assert requests.get(f"{gw}/v2/models/{model}/ready", timeout=10).status_code == 200
        assert requests.get(f"{gw}/models/{model}/readyz", timeout=10).status_code == 200
        lookup = requests.get(f"{gw}/v1/models/{model}/predictions/1", timeout=10)
        assert lookup.status_code == 200, lookup.text
        live = _post(f"{gw}/v1/models/{model}/predict", {"records": _features(specs, model)})
        assert live.status_code == 200 and len(live.json()["predictions"]) == 2, live.text
        # a model's route answered by the other model's replicas would be a 404 from the app
        assert requests.get(f"{gw}/v1/models/{model}x", timeout=10).status_code == 404
    unknown = requests.get(f"{gw}/v1/models/nope/predictions/1", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_invocations_per_model(stack: StackConfig, specs) -> None:
    """MLflow's /invocations names no model: /models/<m>/invocations reaches <m>, with the same answer as the
    model's replica gives directly."""
    answers = {}
    for index, model in enumerate(MODELS):
        spec = specs[model]
        # the signature's inputs: numeric columns, categories as integer codes
        rows = [[0 if f.type == "category" else 1 for f in spec.features]]
        body = {"dataframe_split": {"columns": spec.feature_names, "data": rows}}
        via_gateway = _post(f"{stack.gateway_url}/models/{model}/invocations", body)
        direct = _post(f"{stack.serving_url(index)}/invocations", body)
        assert via_gateway.status_code == 200, via_gateway.text
        assert via_gateway.json() == direct.json()
        answers[model] = via_gateway.json()
        assert requests.get(f"{stack.gateway_url}/models/{model}/ping", timeout=10).status_code == 200
    assert answers["churn"] != answers["spend"]  # a classifier's labels vs a regressor's values


def test_jobs_are_found_through_any_replica(stack: StackConfig, specs) -> None:
    gw = stack.gateway_url
    submit = _post(f"{gw}/v1/models/churn/jobs", {"records": _features(specs, "churn", 1)},
                   **{"Idempotency-Key": f"gw-{uuid.uuid4().hex}"})
    assert submit.status_code == 202, submit.text
    location = submit.headers["Location"]
    assert location.startswith("/v1/jobs/")
    assert requests.get(gw + location, timeout=10).status_code == 200
    # a spend replica reads the churn job too: the queue is one table, so /v1/jobs/ may go to any replica
    spend_replica = stack.serving_url(MODELS.index("spend"), 1)
    assert requests.get(spend_replica + location, timeout=10).json()["id"] == submit.json()["id"]


def test_body_limit_at_the_edge_in_each_protocol_shape(stack: StackConfig) -> None:
    big = b"x" * (1_048_576 + 10)
    headers = {"Content-Type": "application/json"}
    v1 = requests.post(f"{stack.gateway_url}/v1/models/churn/predict", data=big, headers=headers, timeout=10)
    assert v1.status_code == 413 and v1.json()["error"]["code"] == "payload_too_large"
    v2 = requests.post(f"{stack.gateway_url}/v2/models/churn/infer", data=big, headers=headers, timeout=10)
    assert v2.status_code == 413 and isinstance(v2.json()["error"], str)
    ml = requests.post(f"{stack.gateway_url}/models/churn/invocations", data=big, headers=headers, timeout=10)
    assert ml.status_code == 413 and ml.json()["error_code"] == "BAD_REQUEST"
    assert v1.headers["X-Request-ID"]


def _log_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_request_id_is_logged_by_nginx_and_the_app(stack: StackConfig) -> None:
    given = f"trace-{uuid.uuid4().hex}"
    resp = requests.get(f"{stack.gateway_url}/v1/models/churn/predictions/1", headers={"X-Request-ID": given},
                        timeout=10)
    assert resp.headers["X-Request-ID"] == given
    generated = requests.get(f"{stack.gateway_url}/v1/models/churn/predictions/2", timeout=10)
    made = generated.headers["X-Request-ID"]
    assert len(made) == 32 and made != given
    bad = requests.get(f"{stack.gateway_url}/v1/models/churn", headers={"X-Request-ID": "no spaces allowed"},
                       timeout=10).headers["X-Request-ID"]
    assert bad != "no spaces allowed" and len(bad) == 32
    time.sleep(0.5)  # nginx writes its access log line after the response
    for rid, path in ((given, "/v1/models/churn/predictions/1"), (made, "/v1/models/churn/predictions/2")):
        edge = [e for e in _log_entries(access_log_path(stack)) if e["request_id"] == rid]
        assert len(edge) == 1 and edge[0]["uri"] == path and edge[0]["status"] == 200, edge
        app = [e for r in range(stack.replicas) for e in _log_entries(stack.log_file(f"serving-churn-{r + 1}"))
               if e.get("request_id") == rid]
        assert len(app) == 1 and app[0]["path"] == path, app
        churn = {rep.upstream for rep in replicas(stack, list(MODELS)) if rep.model == "churn"}
        assert edge[0]["upstream"] in churn, (edge[0]["upstream"], churn)


def test_stub_status_for_prometheus(stack: StackConfig) -> None:
    text = requests.get(f"{stack.gateway_url}/gateway/status", timeout=5).text
    assert text.startswith("Active connections:") and "server accepts handled requests" in text


# ---------------------------------------------------------------- standard clients through the one door


def _matrix(specs, records: list[dict], model: str):  # noqa: ANN202 - a numpy array
    from scoring.encoding import encode

    return encode(specs[model], records).matrix  # float32, spec order, categories as codes


def _tensor(specs, model: str, n: int):  # noqa: ANN202 - a tritonclient InferInput
    """One 2-D FP32 tensor of n rows (categories as codes, spec order), and the rows as records."""
    import tritonclient.http as th

    records = _features(specs, model, n)
    matrix = _matrix(specs, records, model)
    tensor = th.InferInput("input", list(matrix.shape), "FP32")
    tensor.set_data_from_numpy(matrix)
    return tensor, records


def test_tritonclient_http_through_the_gateway(stack: StackConfig, specs) -> None:
    """What failed for a new user: tritonclient pointed at the one published address."""
    import numpy as np
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    client = th.InferenceServerClient(f"{stack.host}:{stack.serving_port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        # the gateway's /v2 is the replicas' own
        assert client.get_server_metadata() == requests.get(f"{stack.serving_url(0)}/v2", timeout=5).json()
        for model in MODELS:
            meta = client.get_model_metadata(model)
            version = meta["versions"][0]
            assert meta["name"] == model and client.is_model_ready(model)
            assert client.is_model_ready(model, version)
            assert client.get_model_metadata(model, version) == meta
            for n in (1, 50):
                tensor, records = _tensor(specs, model, n)
                result = client.infer(model, [tensor], model_version=version)
                want = _post(f"{stack.gateway_url}/v1/models/{model}/predict", {"records": records}).json()
                output = "score" if specs[model].is_classifier else "prediction"
                np.testing.assert_array_equal(
                    result.as_numpy(output), np.array([p[output] for p in want["predictions"]], dtype=np.float32))
                assert result.get_response()["model_version"] == want["model_version"] == version

        tensor, _ = _tensor(specs, "churn", 2)
        wrong = th.InferInput("input", [2, 3], "FP32")
        wrong.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
        failures = {"columns": lambda: client.infer("churn", [wrong]),
                    "unknown model 'nope'": lambda: client.infer("nope", [tensor]),
                    "is not loaded": lambda: client.infer("churn", [tensor], model_version="999999"),
                    "version 999999": lambda: client.get_model_metadata("churn", "999999")}
        for needle, call in failures.items():
            with pytest.raises(InferenceServerException) as caught:
                call()
            assert needle in str(caught.value), str(caught.value)  # printable: the server's message
            assert caught.value.status() in ("400", "404"), caught.value.status()
        assert not client.is_model_ready("nope")
        # the same client (and its connection pool) still works after the errors
        assert client.infer("churn", [tensor]).as_numpy("score").shape == (2,)
    finally:
        client.close()


def test_tritonclient_grpc_through_the_gateway(stack: StackConfig, specs) -> None:
    """The same through the gateway's gRPC port, the model named in the `model` metadata (stack/gateway_conf.py).
    Needs the replicas' gRPC servers (serving/grpc/, SERVING_GRPC_PORT): skipped where the app has none."""
    import numpy as np
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    if not any(rep.grpc for rep in replicas(stack, list(MODELS))):
        pytest.skip("the serving replicas run no gRPC server in this checkout")
    client = tg.InferenceServerClient(stack.grpc_url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata().name
        for model in MODELS:
            route = {"model": model}
            assert client.is_model_ready(model, headers=route)
            version = client.get_model_metadata(model, headers=route).versions[0]
            output = "score" if specs[model].is_classifier else "prediction"
            for n in (1, 50):
                tensor, records = _tensor(specs, model, n)
                grpc_tensor = tg.InferInput("input", tensor.shape(), "FP32")
                grpc_tensor.set_data_from_numpy(_matrix(specs, records, model))
                result = client.infer(model, [grpc_tensor], headers=route)
                want = _post(f"{stack.gateway_url}/v1/models/{model}/predict", {"records": records}).json()
                np.testing.assert_array_equal(
                    result.as_numpy(output), np.array([p[output] for p in want["predictions"]], dtype=np.float32))
                assert result.get_response().model_version == version
        tensor, records = _tensor(specs, "churn", 2)
        good = tg.InferInput("input", tensor.shape(), "FP32")
        good.set_data_from_numpy(_matrix(specs, records, "churn"))
        wrong = tg.InferInput("input", [2, 3], "FP32")
        wrong.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
        for needle, call in {"columns": lambda: client.infer("churn", [wrong], headers={"model": "churn"}),
                             "metadata 'model'": lambda: client.infer("nope", [good], headers={"model": "nope"}),
                             "nope": lambda: client.infer("nope", [good], headers={"model": "churn"})}.items():
            with pytest.raises(InferenceServerException) as caught:
                call()
            assert needle in str(caught.value), str(caught.value)
            assert caught.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), \
                caught.value.status()
        assert client.infer("churn", [good], headers={"model": "churn"}).as_numpy("score").shape == (2,)
    finally:
        client.close()


def test_server_ready_needs_every_model(stack: StackConfig) -> None:
    ready = requests.get(f"{stack.gateway_url}/v2/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert requests.get(f"{stack.gateway_url}/v2/health/live", timeout=10).json() == {"live": True}


def test_mlflow_clients_through_the_gateway(stack: StackConfig, specs) -> None:
    """MLflow's scoring client with its base URL at /models/<m>, and MLflow's deployments client with the gateway
    as its target and the model as the endpoint, give what the model's replica gives."""
    import pandas as pd
    from mlflow.deployments import get_deploy_client
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from scoring.encoding import encode

    deploy = get_deploy_client(stack.gateway_url)
    for index, model in enumerate(MODELS):
        spec = specs[model]
        frame = pd.DataFrame(encode(spec, _features(specs, model, 20)).matrix.astype("float64"),
                             columns=spec.feature_names)
        direct = ScoringServerClient(stack.host, stack.replica_port_of(index, 0)).invoke(frame).get_predictions()
        via = ScoringServerClient(stack.host, f"{stack.serving_port}/models/{model}")
        via.wait_server_ready(timeout=10)
        pd.testing.assert_frame_equal(via.invoke(frame).get_predictions(), direct)
        split = json.loads(frame.to_json(orient="split", index=False))  # NaN (a missing value) as null
        answer = deploy.predict(endpoint=model, inputs={"dataframe_split": split})
        assert answer["predictions"] == direct.iloc[:, 0].tolist()
    bad = _post(f"{stack.gateway_url}/endpoints/churn/invocations", {"dataframe_split": {"columns": ["x"],
                                                                                          "data": [[1]]}})
    assert bad.status_code == 400 and set(bad.json()) >= {"error_code", "message"}, bad.text


def test_job_routes_go_to_the_threaded_replicas(stack: StackConfig, specs) -> None:
    jobs = {rep.upstream for rep in replicas(stack, list(MODELS)) if rep.kind == "jobs"}
    rid = f"jobs-{uuid.uuid4().hex}"
    submit = _post(f"{stack.gateway_url}/v1/models/churn/jobs", {"records": _features(specs, "churn", 1)},
                   **{"X-Request-ID": rid})
    assert submit.status_code == 202, submit.text
    read = requests.get(stack.gateway_url + submit.headers["Location"], headers={"X-Request-ID": rid + "r"},
                        timeout=10)
    assert read.status_code == 200
    time.sleep(0.5)  # nginx writes its access log line after the response
    seen = {e["request_id"]: e["upstream"] for e in _log_entries(access_log_path(stack))}
    assert seen[rid] in jobs and seen[rid + "r"] in jobs, (seen.get(rid), seen.get(rid + "r"), jobs)
    lookup = requests.get(f"{stack.gateway_url}/v1/models/churn/predictions/1", headers={"X-Request-ID": rid + "l"},
                          timeout=10)
    assert lookup.status_code == 200
    time.sleep(0.5)
    assert {e["request_id"]: e["upstream"] for e in _log_entries(access_log_path(stack))}[rid + "l"] not in jobs


# ---------------------------------------------------------------- slow clients


def _slow_clients(host: str, port: int, path: str, n: int = 8) -> list[socket.socket]:
    """n connections that send their headers and part of a body, then wait."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 10000\r\n\r\n{{\"records\": [".encode())
        socks.append(s)
    return socks


def _get_seconds(url: str, timeout: float) -> float | None:
    began = time.monotonic()
    try:
        requests.get(url, timeout=timeout).raise_for_status()
    except requests.RequestException:
        return None
    return time.monotonic() - began


def test_slow_clients_do_not_stall_a_model(stack: StackConfig) -> None:
    socks = _slow_clients(stack.host, stack.serving_port, "/v1/models/churn/predict")
    try:
        time.sleep(0.5)
        for _ in range(5):
            took = _get_seconds(f"{stack.gateway_url}/models/churn/healthz", timeout=5)
            assert took is not None and took < 1.0, took
    finally:
        for s in socks:
            s.close()
    # The control: the same 8 clients straight at one replica (1 sync worker) hold it, which is what the
    # gateway is for; this is what the test above would see without it.
    replica = stack.serving_url(0, 0)
    port = int(replica.rsplit(":", 1)[1])
    socks = _slow_clients(stack.host, port, "/v1/models/churn/predict")
    try:
        time.sleep(0.5)
        assert _get_seconds(f"{replica}/healthz", timeout=2) is None
    finally:
        for s in socks:
            s.close()
    _wait_ready(replica)


# ---------------------------------------------------------------- failures under load


class Load:
    """Threads sending side-effect-free requests through the gateway (a fresh connection each), counting
    failures (no answer, or any status other than the expected one)."""

    def __init__(self, calls: list[Callable[[], requests.Response]], threads: int = 3) -> None:
        self.calls = calls
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, offset: int) -> None:
        i = offset
        while not self.stop.is_set():
            call = self.calls[i % len(self.calls)]
            i += 1
            try:
                resp = call()
                failed = None if resp.status_code in (200, 202) else f"{resp.status_code} {resp.text[:200]}"
            except requests.RequestException as exc:
                failed = repr(exc)
            with self._lock:
                if failed:
                    self.failures.append(failed)
                else:
                    self.ok += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)


def _side_effect_free(stack: StackConfig, specs) -> list[Callable[[], requests.Response]]:
    gw = stack.gateway_url
    churn = _features(specs, "churn", 1)
    spend = _features(specs, "spend", 1)
    ml = specs["spend"]
    inv = {"dataframe_split": {"columns": ml.feature_names,
                               "data": [[0 if f.type == "category" else 1 for f in ml.features]]}}
    return [
        lambda: requests.get(f"{gw}/v1/models/churn/predictions/{1 + int(time.time() * 1000) % 500}", timeout=30),
        lambda: _post(f"{gw}/v1/models/churn/predict", {"records": churn}),
        lambda: _post(f"{gw}/v1/models/spend/predict", {"records": spend}),
        lambda: _post(f"{gw}/models/spend/invocations", inv),
        lambda: _post(f"{gw}/v1/models/churn/jobs", {"records": churn},
                      **{"Idempotency-Key": f"load-{uuid.uuid4().hex}"}),
    ]


def test_killing_a_replica_under_load_fails_no_side_effect_free_request(stack: StackConfig, specs) -> None:
    victim = read_pid(stack.pid_file("serving-churn-1"))
    assert alive(victim)
    with Load(_side_effect_free(stack, specs)) as load:
        time.sleep(2)
        before = load.ok
        os.killpg(victim.pid, signal.SIGKILL)  # the replica's whole process group: master and workers
        time.sleep(4)
    assert not alive(victim)
    # A kill that lands between gunicorn's two writes of one response (headers, then body) leaves nginx with a
    # header it has already passed on: no proxy can take that back and retry. Everything else is retried; that
    # window (microseconds a request) is gunicorn's write path, to be closed there (one write per response).
    truncated = [f for f in load.failures if "IncompleteRead" in f]
    assert [f for f in load.failures if f not in truncated] == [], load.failures[:5]
    assert len(truncated) <= 1, truncated
    assert before > 0 and load.ok > before + 10, (before, load.ok)
    # `make up` brings back what is missing
    up(stack, out=lambda _: None)
    _wait_ready(stack.serving_url(0, 0))


def test_rolling_restart_fails_no_request(stack: StackConfig, specs) -> None:
    before = {rep.name: read_pid(stack.pid_file(rep.name)).pid for rep in replicas(stack, list(MODELS))
              if rep.model == "churn"}  # the sync replicas and the job replica
    gw = stack.gateway_url
    churn = _features(specs, "churn", 1)
    calls = [*_side_effect_free(stack, specs),
             # with the gateway draining each replica first, even a submit without a key does not fail
             lambda: _post(f"{gw}/v1/models/churn/jobs", {"records": churn})]
    with Load(calls) as load:
        time.sleep(1)
        replaced = rolling_restart(stack, out=lambda _: None, models=["churn"])  # spend's go the same way
        time.sleep(1)
    assert replaced == list(before)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 20
    after = {name: read_pid(stack.pid_file(name)).pid for name in before}
    assert all(after[n] != before[n] for n in before), (before, after)
    assert "down" not in (stack.gateway_dir / "nginx.conf").read_text(), "every replica back in rotation"
