"""The online app under a real gunicorn (2 workers), against the session's real PostgreSQL and MLflow server.

Covers every route, each bad input, the MLflow scoring protocol against the real `mlflow models serve`
(through MLflow's own client), the Open Inference Protocol through tritonclient, metrics, request ids,
and live == batch predictions for the same rows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import requests
from psycopg import sql

from scoring.batch import run_batch
from scoring.db import connect
from scoring.encoding import encode
from scoring.store import ensure_day_partition
from stack.pg import free_port
from stack.services import VENV_BIN, stop_process, wait_http
from testing.servers import start_gunicorn

pytestmark = pytest.mark.integration

MODEL = "churn"
MAX_ROWS = 50
MAX_BODY = 64 * 1024


def write_batch_predictions(spec, day: dt.date, db_url: str) -> str:
    """The nightly batch's own path (scoring.batch, as the predict DAG runs it) for the day; returns the run id."""
    run_id = f"test_{uuid.uuid4().hex[:8]}"
    run_batch(spec, day, run_id, url=db_url)
    return run_id


def features_of(spec, day: dt.date, db_url: str, n: int) -> pd.DataFrame:
    key = spec.source.entity_key
    with connect(db_url) as conn:
        rows = conn.execute(sql.SQL("SELECT {} FROM features.customer_daily WHERE snapshot_date = %s "
                                    "ORDER BY 1 LIMIT %s").format(
            sql.SQL(", ").join(map(sql.Identifier, [key, *spec.feature_names]))), (day, n)).fetchall()
    return pd.DataFrame(rows, columns=[key, *spec.feature_names])


def records_of(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready records (NaN -> None, numpy scalars -> Python), full precision, as a client sends them."""
    clean = frame.astype(object).where(frame.notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in clean.to_dict("records")]


@pytest.fixture(scope="module")
def served(db_url, trained_models, demo_features, specs, tmp_path_factory):
    spec = specs[MODEL]
    write_batch_predictions(spec, demo_features, db_url)
    logdir = tmp_path_factory.mktemp("serving")
    port, grpc_port = free_port(), free_port()
    proc = start_gunicorn(MODEL, port, logdir / "gunicorn.log", env={
        "DATABASE_URL": db_url, "SERVING_POLL_INTERVAL_S": "1", "SERVING_MAX_ROWS": str(MAX_ROWS),
        "SERVING_MAX_BODY_BYTES": str(MAX_BODY), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "SERVING_ACCESS_LOG": str(logdir / "access.log")}, grpc_port=grpc_port)
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "grpc": f"127.0.0.1:{grpc_port}", "spec": spec,
           "day": demo_features, "version": trained_models[MODEL], "logdir": logdir, "proc": proc}
    stop_process(proc)


def post(served, path: str, body, **headers) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(served["url"] + path, data=data,
                         headers={"Content-Type": "application/json", **headers}, timeout=30)


# ---------------------------------------------------------------- operations


def test_health_ready_and_model_info(served):
    assert requests.get(served["url"] + "/healthz", timeout=5).json()["status"] == "ok"
    ready = requests.get(served["url"] + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"model_loaded": True, "database": True}
    info = requests.get(served["url"] + f"/v1/models/{MODEL}", timeout=5).json()
    assert info["loaded_version"] == served["version"]
    assert info["loaded_at"] and info["task"] == "classification"
    assert [f["name"] for f in info["signature"]["inputs"]] == served["spec"].feature_names
    assert requests.get(served["url"] + "/v1/models/nope", timeout=5).status_code == 404


def test_openapi_matches_routes(served):
    from serving.openapi import openapi_path
    from serving.protocols import PROTOCOLS

    doc = requests.get(served["url"] + "/openapi.json", timeout=5).json()
    served_ops = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    # every documented route of this app is in the served document (the declarations are its only source)
    declared = {(openapi_path(r.rule), r.method.lower()) for p in PROTOCOLS for r in p.routes if r.documented}
    assert served_ops == declared
    assert {("/v1/models/{model}/jobs", "post"), ("/v1/jobs/{job_id}", "get"), ("/invocations", "post"),
            ("/v2/models/{model}/infer", "post"), ("/healthz", "get")} <= served_ops
    assert doc["paths"]["/v1/models/{model}/predict"]["post"]["security"] == [{"bearer": ["predict"]}]


def test_request_id_metrics_and_access_log(served):
    resp = requests.get(served["url"] + "/healthz", headers={"X-Request-ID": "trace-abc-123"}, timeout=5)
    assert resp.headers["X-Request-ID"] == "trace-abc-123"
    generated = requests.get(served["url"] + "/healthz", timeout=5).headers["X-Request-ID"]
    assert len(generated) == 32
    for _ in range(6):  # spread over both workers
        post(served, f"/v1/models/{MODEL}/predict", {"records": [{"tenure_months": 1}]})
    deadline = time.time() + 60
    while True:  # the second worker may still be loading its model on a busy machine
        text = requests.get(served["url"] + "/metrics", timeout=5).text
        versions = [line for line in text.splitlines() if line.startswith("serving_model_version{")]
        loaded = [line for line in versions if line.endswith(f" {float(served['version'])}")]
        if len(loaded) >= 2 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert 'serving_requests_total{method="POST",model="churn",route="/v1/models/<model>/predict",status="400"}' \
        in text
    assert "serving_request_duration_seconds_bucket" in text
    # one gauge per live worker, each at the served version once loaded (a worker still loading shows 0)
    assert len(loaded) >= 2, versions
    log_lines = (served["logdir"] / "access.log").read_text().splitlines()
    entries = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert any(e["request_id"] == "trace-abc-123" and e["path"] == "/healthz" and e["status"] == 200
               for e in entries)


# ---------------------------------------------------------------- precomputed lookups


def test_lookup_latest_and_by_date(served, db_url):
    day = served["day"]
    url = served["url"] + f"/v1/models/{MODEL}/predictions/"
    body = requests.get(url + "17", timeout=5).json()
    with connect(db_url) as conn:
        score, label, version = conn.execute(
            "SELECT score, label, model_version FROM predictions.churn WHERE prediction_date = %s "
            "AND customer_id = 17", (day,)).fetchone()
    assert body["prediction_date"] == day.isoformat() and body["entity_id"] == 17
    assert (body["score"], body["label"], body["model_version"]) == (score, label, str(version))
    assert body["run_id"].startswith("test_") and body["source"] == "precomputed"
    assert requests.get(url + f"17?date={day.isoformat()}", timeout=5).json() == body

    missing = requests.get(url + "99999999", timeout=5)
    assert missing.status_code == 404 and "customer_id=99999999" in missing.json()["error"]["message"]
    other_day = requests.get(url + "17?date=2020-01-01", timeout=5)
    assert other_day.status_code == 404 and "2020-01-01" in other_day.json()["error"]["message"]
    assert requests.get(url + "17?date=yesterday", timeout=5).status_code == 400
    bad_id = requests.get(url + "abc", timeout=5)
    assert bad_id.status_code == 400 and "customer_id" in bad_id.json()["error"]["message"]
    too_big = requests.get(url + str(2**63), timeout=5)
    assert too_big.status_code == 400 and "64-bit" in too_big.json()["error"]["message"]
    assert requests.get(url + str(-(2**63)), timeout=5).status_code == 404  # in range, no such customer
    assert requests.get(served["url"] + "/v1/models/spend2/predictions/17", timeout=5).status_code == 404

    # a miss with ?fallback=live is scored from the entity's latest features: the same number batch stored
    live = requests.get(url + "17?date=2020-01-01&fallback=live", timeout=5).json()
    assert live["source"] == "live" and live["features_date"] == day.isoformat(), live
    assert (live["score"], live["label"]) == (score, label)
    nothing = requests.get(url + "99999999?fallback=live", timeout=5)
    assert nothing.status_code == 404 and "no features" in nothing.json()["error"]["message"]
    assert requests.get(url + "17?fallback=sometimes", timeout=5).status_code == 400


def test_lookup_never_serves_a_half_loaded_day(served, db_url, specs):
    day = served["day"] + dt.timedelta(days=1)  # a later day whose run has not finished
    with connect(db_url) as conn:
        part = ensure_day_partition(conn, "predictions.churn", day)
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 17, 0.99, 1, 'churn', 1, 'half', now())").format(part),
                     (day,))
        conn.execute("INSERT INTO ops.batch_runs (model_name, prediction_date, run_id, status) "
                     "VALUES ('churn', %s, 'half', 'running')", (day,))
        conn.commit()
    try:
        time.sleep(2.5)  # past the latest-date cache
        body = requests.get(served["url"] + f"/v1/models/{MODEL}/predictions/17", timeout=5).json()
        assert body["prediction_date"] == served["day"].isoformat(), body
    finally:
        with connect(db_url) as conn:
            conn.execute("DELETE FROM ops.batch_runs WHERE run_id = 'half'")
            conn.execute(sql.SQL("DROP TABLE {}").format(part))
            conn.commit()


def test_lookups_through_a_nightly_rerun_swap(served, db_url):
    """Re-running the day swaps its partition (detach + attach) under the prepared lookup statements: every
    lookup meanwhile answers 200 with either the old run or the new one, and the new one afterwards."""
    import threading

    url = served["url"] + f"/v1/models/{MODEL}/predictions/"
    before = requests.get(url + "17", timeout=5).json()["run_id"]
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                for entity in (17, 18, 19):
                    resp = http.get(url + str(entity), timeout=10)
                    seen.append((resp.status_code, resp.json().get("run_id")))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        after = write_batch_predictions(served["spec"], served["day"], db_url)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen and all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:5]
    assert {run for _, run in seen} <= {before, after}
    assert requests.get(url + "17", timeout=5).json()["run_id"] == after


# ---------------------------------------------------------------- live predictions


def test_live_equals_batch_for_the_same_rows(served, db_url):
    spec = served["spec"]
    frame = features_of(spec, served["day"], db_url, 40)
    resp = post(served, f"/v1/models/{MODEL}/predict", {"records": records_of(frame[spec.feature_names])})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == served["version"]
    with connect(db_url) as conn:
        stored = dict(conn.execute("SELECT customer_id, score FROM predictions.churn WHERE prediction_date = %s "
                                   "AND customer_id = ANY(%s)", (served["day"], frame.customer_id.tolist())))
    live = [p["score"] for p in body["predictions"]]
    assert live == [stored[int(c)] for c in frame.customer_id]  # bit-identical (Invariant 1)
    assert all(p["label"] == int(p["score"] >= 0.5) for p in body["predictions"])
    # one row at a time gives the same numbers
    one = post(served, f"/v1/models/{MODEL}/predict", {"records": records_of(frame[spec.feature_names].head(1))})
    assert one.json()["predictions"][0]["score"] == live[0]


def test_live_cache_first_policy(served, db_url):
    spec = served["spec"]
    frame = features_of(spec, served["day"], db_url, 3)
    records = records_of(frame)  # with customer_id
    records[2]["customer_id"] = 99999999  # no precomputed prediction: scored live
    resp = post(served, f"/v1/models/{MODEL}/predict", {"records": records, "fallback": "precomputed"})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["source"] for p in preds] == ["precomputed", "precomputed", "live"]
    assert preds[0]["prediction_date"] == served["day"].isoformat()
    live = post(served, f"/v1/models/{MODEL}/predict", {"records": records}).json()["predictions"]
    assert [p["source"] for p in live] == ["live"] * 3 and live[2]["customer_id"] == 99999999
    assert [p["score"] for p in live[:2]] == [p["score"] for p in preds[:2]]  # cache == live for these rows
    bad = post(served, f"/v1/models/{MODEL}/predict", {"records": records, "fallback": "sometimes"})
    assert bad.status_code == 400 and "fallback" in bad.json()["error"]["message"]


def _valid_record() -> dict:
    return {"tenure_months": 12, "plan": "basic", "contract": "one-year", "region": None, "payment_method": "card",
            "monthly_charges": 50.5, "data_usage_gb": 3.2, "avg_session_minutes": 10.0, "support_calls_30d": 1,
            "late_payments_12m": 0, "num_products": 2, "days_since_last_login": 3}


@pytest.mark.parametrize("case, body, status, code, names", [
    ("malformed json", '{"records": [', 400, "malformed_json", "JSON"),
    ("not an object", "[1, 2]", 400, "invalid_body", "records"),
    ("no records", {"rows": []}, 400, "unknown_field", "rows"),
    ("empty records", {"records": []}, 400, "invalid_records", "records"),
    ("missing column", {"records": [{k: v for k, v in _valid_record().items() if k != "plan"}]}, 400,
     "missing_column", "plan"),
    ("extra column", {"records": [{**_valid_record(), "favourite_colour": "red"}]}, 400, "unknown_column",
     "favourite_colour"),
    ("wrong type", {"records": [{**_valid_record(), "monthly_charges": "lots"}]}, 422, "wrong_type",
     "monthly_charges"),
    ("not an integer", {"records": [{**_valid_record(), "tenure_months": 1.5}]}, 422, "wrong_type",
     "tenure_months"),
    ("unknown category", {"records": [{**_valid_record(), "plan": "gold"}]}, 422, "unknown_category", "gold"),
    ("null in a required feature", {"records": [{**_valid_record(), "contract": None}]}, 422, "null_value",
     "contract"),
    ("too many rows", {"records": [_valid_record()] * (MAX_ROWS + 1)}, 413, "too_many_rows", str(MAX_ROWS)),
])
def test_live_bad_input(served, case, body, status, code, names):
    resp = post(served, f"/v1/models/{MODEL}/predict", body)
    assert resp.status_code == status, (case, resp.text)
    err = resp.json()["error"]
    assert err["code"] == code and names in err["message"], (case, err)


def test_live_bad_request_framing(served):
    wrong_type = post(served, f"/v1/models/{MODEL}/predict", "records=1", **{"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.json()["error"]["message"]
    big = post(served, f"/v1/models/{MODEL}/predict", {"records": [_valid_record()], "pad": "x" * MAX_BODY})
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    unknown_model = post(served, "/v1/models/nope/predict", {"records": [_valid_record()]})
    assert unknown_model.status_code == 404 and "nope" in unknown_model.json()["error"]["message"]
    assert requests.get(served["url"] + "/no/such/route", timeout=5).status_code == 404
    assert requests.get(served["url"] + f"/v1/models/{MODEL}/predict", timeout=5).status_code == 405
    # the workers survived all of it
    assert post(served, f"/v1/models/{MODEL}/predict", {"records": [_valid_record()]}).status_code == 200


# ---------------------------------------------------------------- MLflow scoring protocol


@pytest.fixture(scope="module")
def mlflow_serve(served):
    """The real `mlflow models serve` on the same registered version, for side-by-side answers."""
    port = free_port()
    log = open(served["logdir"] / "mlflow-serve.log", "ab")  # noqa: SIM115
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/{served['version']}",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 120, proc, "mlflow models serve")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def _encoded_frame(spec, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(encode(spec, frame[spec.feature_names]).matrix.astype(np.float64),
                        columns=spec.feature_names)


def test_invocations_with_mlflow_client_equals_mlflow_serve(served, mlflow_serve, db_url):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    spec = served["spec"]
    model_frame = _encoded_frame(spec, features_of(spec, served["day"], db_url, 25))
    ours = ScoringServerClient("127.0.0.1", served["port"])
    ours.wait_server_ready(timeout=10)
    theirs = ScoringServerClient("127.0.0.1", int(mlflow_serve.rsplit(":", 1)[1]))
    got = ours.invoke(model_frame).get_predictions()
    want = theirs.invoke(model_frame).get_predictions()
    pd.testing.assert_frame_equal(got, want)
    assert set(np.asarray(got).ravel()) <= {0, 1}  # class labels, as the xgboost flavour's pyfunc answers
    assert ours.get_version() == theirs.get_version()


def test_invocations_payload_forms_and_errors_match_mlflow_serve(served, mlflow_serve, db_url):
    spec = served["spec"]
    frame = _encoded_frame(spec, features_of(spec, served["day"], db_url, 5))
    rec = records_of(frame)
    plain = records_of(frame.fillna(0))  # every value a number: /invocations' direct path
    payloads = {
        "split": ("application/json", json.dumps({"dataframe_split": {
            "columns": list(frame.columns), "data": [list(r.values()) for r in rec]}})),
        "split, numbers only": ("application/json", json.dumps({"dataframe_split": {
            "columns": list(frame.columns), "data": [list(r.values()) for r in plain]}})),
        "records, numbers only": ("application/json", json.dumps({"dataframe_records": plain})),
        "records": ("application/json", json.dumps({"dataframe_records": rec})),
        "instances": ("application/json", json.dumps({"instances": rec})),
        "inputs": ("application/json", json.dumps({"inputs": {c: [r[c] for r in rec] for c in frame.columns}})),
        "csv": ("text/csv", frame.to_csv(index=False)),
        "charset": ("application/json; charset=utf-8", json.dumps({"dataframe_records": rec})),
        "extra column": ("application/json", json.dumps({"dataframe_records": [{**rec[0], "zzz": 1}]})),
        "malformed": ("application/json", "{not json"),
        "a list": ("application/json", "[1, 2]"),
        "two formats": ("application/json", json.dumps({"inputs": [], "instances": []})),
        "missing column": ("application/json", json.dumps({"dataframe_records": [{"tenure_months": 1}]})),
        "wrong type": ("application/json", json.dumps({"dataframe_records": [{**rec[0], "tenure_months": "x"}]})),
        "wrong content type": ("application/xml", "<a/>"),
        "wrong charset": ("application/json; charset=latin-1", "{}"),
    }
    for case, (content_type, body) in payloads.items():
        answers = [requests.post(base + "/invocations", data=body, headers={"Content-Type": content_type},
                                 timeout=30) for base in (mlflow_serve, served["url"])]
        theirs, ours = answers
        assert ours.status_code == theirs.status_code, (case, theirs.text[:300], ours.text[:300])
        if theirs.status_code == 200:
            assert ours.json() == theirs.json(), case
        else:
            err = ours.json()
            assert {"error_code", "message"} <= set(err) and err["message"], (case, err)
            if theirs.headers.get("content-type", "").startswith("application/json"):
                assert err["error_code"] == theirs.json()["error_code"], case
    # beyond MLflow: an out-of-range category code and too many rows are refused with MLflow's error shape
    bad_code = requests.post(served["url"] + "/invocations", json={"dataframe_records": [{**rec[0], "plan": 7}]},
                             timeout=10)
    assert bad_code.status_code == 400 and "plan" in bad_code.json()["message"]
    many = requests.post(served["url"] + "/invocations", json={"dataframe_records": rec * 11}, timeout=10)
    assert many.status_code == 413 and many.json()["error_code"] == "BAD_REQUEST"
    ping = requests.get(served["url"] + "/ping", timeout=5)
    assert ping.status_code == 200


# ---------------------------------------------------------------- Open Inference Protocol


def _oip_inputs(spec, frame: pd.DataFrame, binary: bool):
    import tritonclient.http as th

    inputs = []
    for f in spec.features:
        col = frame[f.name]
        if f.type == "category":
            arr = np.array([b"" if v is None or v != v else str(v).encode() for v in col], dtype=object)
            datatype = "BYTES"
        elif f.type == "int":
            if col.isna().any():  # an integer tensor cannot carry a missing value: send FP32 NaN instead
                arr, datatype = col.to_numpy(np.float32, na_value=np.nan), "FP32"
            else:
                arr, datatype = col.to_numpy(np.int64), "INT64"
        else:
            arr, datatype = col.to_numpy(np.float32, na_value=np.nan), "FP32"
        t = th.InferInput(f.name, [len(frame)], datatype)
        t.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(t)
    return inputs


def test_open_inference_protocol_with_tritonclient(served, db_url):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    spec = served["spec"]
    client = th.InferenceServerClient(f"127.0.0.1:{served['port']}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and not client.is_model_ready("nope")
    assert client.get_server_metadata()["name"]
    meta = client.get_model_metadata(MODEL)
    assert meta["versions"] == [served["version"]]
    assert [i["name"] for i in meta["inputs"]] == spec.feature_names
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert set(outputs) == {"score", "label", "contributions"}  # contributions: only when asked for (issue 22)
    assert outputs["contributions"]["parameters"]["on_request"] is True

    frame = features_of(spec, served["day"], db_url, 20)
    frame = frame.astype({f.name: "float64" for f in spec.features if f.type == "float"})
    live = post(served, f"/v1/models/{MODEL}/predict", {"records": records_of(frame[spec.feature_names])})
    want = np.array([p["score"] for p in live.json()["predictions"]], dtype=np.float32)
    for binary in (True, False):
        result = client.infer(MODEL, _oip_inputs(spec, frame, binary), request_id="r1",
                              outputs=None if binary else [th.InferRequestedOutput("score", binary_data=False),
                                                           th.InferRequestedOutput("label", binary_data=False)])
        np.testing.assert_array_equal(result.as_numpy("score"), want)
        np.testing.assert_array_equal(result.as_numpy("label"), (want >= 0.5).astype(np.int64))
        assert result.get_response()["model_version"] == served["version"]

    # one 2-D FP32 tensor, categories as codes, spec order
    matrix = encode(spec, frame[spec.feature_names]).matrix
    t = th.InferInput("input", list(matrix.shape), "FP32")
    t.set_data_from_numpy(matrix)
    np.testing.assert_array_equal(client.infer(MODEL, [t]).as_numpy("score"), want)

    with pytest.raises(InferenceServerException, match="unknown category"):
        bad = frame.head(1).copy()
        bad["plan"] = "gold"
        client.infer(MODEL, _oip_inputs(spec, bad, True))
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [t])
    wrong = th.InferInput("input", [matrix.shape[0], 3], "FP32")
    wrong.set_data_from_numpy(matrix[:, :3].copy())
    with pytest.raises(InferenceServerException, match="columns"):
        client.infer(MODEL, [wrong])


def test_open_inference_over_grpc_on_the_replica(served, db_url):
    """tritonclient.grpc against the gunicorn replica's gRPC port (served by its workers)."""
    import grpc
    import tritonclient.grpc as tg
    from tritonclient.grpc import service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    from testing import oip_client

    spec = served["spec"]
    with tg.InferenceServerClient(served["grpc"]) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        assert client.get_server_metadata().name == "model-serving-platform"
        meta = client.get_model_metadata(MODEL, as_json=True)
        assert meta["versions"] == [served["version"]]
        assert [i["name"] for i in meta["inputs"]] == spec.feature_names
        frame = features_of(spec, served["day"], db_url, 50)
        with connect(db_url) as conn:  # the nightly batch's scores for these rows
            stored = dict(conn.execute("SELECT customer_id, score FROM predictions.churn WHERE prediction_date = "
                                       "%s AND customer_id = ANY(%s)", (served["day"], frame.customer_id.tolist())))
        want = np.array([stored[int(c)] for c in frame.customer_id], dtype=np.float32)
        records = records_of(frame[spec.feature_names])
        for n in (1, 50):
            result = client.infer(MODEL, oip_client.triton_inputs(spec, records[:n]))
            np.testing.assert_array_equal(result.as_numpy("score"), want[:n])  # batch == gRPC (raw contents)
            assert result.get_response().model_version == served["version"]
        with grpc.insecure_channel(served["grpc"]) as channel:
            typed = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                oip_client.typed_request(spec, records), timeout=10)
        np.testing.assert_array_equal(np.frombuffer(typed.raw_output_contents[0], dtype="<f4"), want)
        wrong_shape = oip_client.triton_inputs(spec, records[:2])
        wrong_shape[0].set_shape([2, 2])
        for call, code, needle in [
                (lambda: client.infer(MODEL, wrong_shape), "INVALID_ARGUMENT", spec.feature_names[0]),
                (lambda: client.infer("nope", oip_client.triton_inputs(spec, records[:1])), "NOT_FOUND", "nope"),
                (lambda: client.infer(MODEL, oip_client.triton_inputs(spec, records * 2)), "INVALID_ARGUMENT",
                 "SERVING_MAX_ROWS")]:
            with pytest.raises(InferenceServerException) as err:
                call()
            assert err.value.status() == f"StatusCode.{code}" and needle in str(err.value), str(err.value)
            again = client.infer(MODEL, oip_client.triton_inputs(spec, records[:1]))  # the same client goes on
            assert again.as_numpy("score")[0] == want[0]


def test_batch_rest_grpc_and_async_give_identical_predictions(served, db_url, tmp_path):
    """The same rows through the nightly batch, REST (/v1), gRPC and an async job: the same scores."""
    import tritonclient.grpc as tg

    from testing import oip_client
    from testing.servers import AsyncWorker

    spec = served["spec"]
    frame = features_of(spec, served["day"], db_url, 30)
    records = records_of(frame[spec.feature_names])
    with connect(db_url) as conn:
        stored = dict(conn.execute("SELECT customer_id, score FROM predictions.churn WHERE prediction_date = %s "
                                   "AND customer_id = ANY(%s)", (served["day"], frame.customer_id.tolist())))
    batch = [stored[int(c)] for c in frame.customer_id]
    rest = [p["score"] for p in post(served, f"/v1/models/{MODEL}/predict", {"records": records}).json()["predictions"]]
    with tg.InferenceServerClient(served["grpc"]) as client:
        grpc_scores = client.infer(MODEL, oip_client.triton_inputs(spec, records)).as_numpy("score")
    job = post(served, f"/v1/models/{MODEL}/jobs", {"records": records})
    assert job.status_code == 202, job.text
    worker = AsyncWorker(MODEL, tmp_path / "worker.log", {"DATABASE_URL": db_url, "SERVING_POLL_INTERVAL_S": "60"})
    try:
        worker.wait_ready()
        deadline = time.time() + 60
        while (done := requests.get(served["url"] + job.json()["status_url"], timeout=5).json())["status"] != "done":
            assert done["status"] in ("queued", "running") and time.time() < deadline, done
            time.sleep(0.2)
    finally:
        worker.stop()
    async_scores = [p["score"] for p in done["predictions"]]
    assert rest == batch == async_scores  # bit-identical doubles
    np.testing.assert_array_equal(grpc_scores, np.array(batch, dtype=np.float32))  # FP32 on the wire, as /v2


def test_open_inference_protocol_error_shape(served):
    url = served["url"] + f"/v2/models/{MODEL}/infer"
    for body, needle in [("{bad", "JSON"), (json.dumps({"inputs": []}), "inputs"),
                         (json.dumps({"inputs": [{"name": "input", "shape": [1, 12], "datatype": "FP32",
                                                  "data": [1.0] * 11}]}), "needs 12 values"),
                         (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
                          "missing feature column")]:
        resp = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=5)
        assert resp.status_code == 400 and set(resp.json()) == {"error"} and needle in resp.json()["error"], \
            resp.text
    assert requests.get(served["url"] + "/v2/models/nope", timeout=5).json().keys() == {"error"}
