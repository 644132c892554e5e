"""Open Inference over gRPC (serving/grpc/) with the real `tritonclient.grpc` and a plain gRPC stub, against a
real gRPC server on loopback built on the app's own objects (tests/inprocess.py: a real scorer and holder, an
in-memory store; no PostgreSQL, MLflow or gunicorn). The replica under gunicorn is tests/test_serving.py's."""

from __future__ import annotations

import datetime as dt

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from inprocess import RECORD, churn_spec, make_app, train_scorer
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from scoring.demo_data import generate_day
from serving.dataplane import EXTENSION_KEY
from serving.grpc.server import start_for_app
from stack.pg import free_port
from testing import oip_client

MODEL = "churn"
TOKEN = "s3cret"
MAX_ROWS = 60
SPEC = churn_spec()


@pytest.fixture(scope="module")
def scorer():
    return train_scorer(SPEC)


def serve(scorer, **settings):
    """(app, address, server): the app and a gRPC server on its objects, as a gunicorn worker runs them."""
    app, _ = make_app(scorer, **{"max_rows": MAX_ROWS, **settings})
    address = f"127.0.0.1:{free_port()}"
    return app, address, start_for_app(app, address, threads=2)


@pytest.fixture(scope="module")
def served(scorer):
    app, address, server = serve(scorer)
    yield app, address
    server.stop(0)


@pytest.fixture(scope="module")
def client(served):
    with tg.InferenceServerClient(served[1]) as c:
        yield c


def rows(n: int) -> list[dict]:
    frame = generate_day(dt.date(2026, 11, 2), n, seed=11)[SPEC.feature_names]
    frame = frame.astype(object).where(frame.notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame.to_dict("records")]


def triton_inputs(records: list[dict]) -> list[tg.InferInput]:
    return oip_client.triton_inputs(SPEC, records)


def typed_request(records: list[dict], model: str = MODEL) -> pb.ModelInferRequest:
    return oip_client.typed_request(SPEC, records, model)


def rest_scores(app, records: list[dict]) -> list[float]:
    body = app.test_client().post(f"/v1/models/{MODEL}/predict", json={"records": records}).json
    return [p["score"] for p in body["predictions"]]


def test_health_and_metadata(client, served, scorer):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    meta = client.get_server_metadata()
    assert meta.name == "model-serving-platform" and "binary_tensor_data" in meta.extensions
    model = client.get_model_metadata(MODEL, as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "xgboost"
    assert [(i["name"], i["datatype"]) for i in model["inputs"]] == [
        (f.name, {"int": "INT64", "float": "FP32", "category": "BYTES"}[f.type]) for f in SPEC.features]
    assert [o["name"] for o in model["outputs"]] == ["score", "label"]
    for call in (lambda: client.is_model_ready("spend"), lambda: client.get_model_metadata("spend"),
                 lambda: client.get_model_metadata(MODEL, "7")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.NOT_FOUND", err.value


@pytest.mark.parametrize("n", [1, 50])
def test_infer_raw_and_typed_contents_equal_rest(client, served, n):
    app, address = served
    records = rows(n)
    want = np.array(rest_scores(app, records), dtype=np.float32)
    result = client.infer(MODEL, triton_inputs(records), request_id="r-1")  # tritonclient sends raw contents
    np.testing.assert_array_equal(result.as_numpy("score"), want)
    np.testing.assert_array_equal(result.as_numpy("label"), (want > 0.5).astype(np.int64))
    response = result.get_response()
    assert response.model_version == "1" and response.id == "r-1"
    with grpc.insecure_channel(address) as channel:  # a plain stub, typed contents, one output asked for
        req = typed_request(records)
        req.outputs.add(name="score")
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    assert [o.name for o in answer.outputs] == ["score"] and list(answer.outputs[0].shape) == [n]
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], dtype="<f4"), want)


def test_one_2d_tensor_in_feature_order(client, served, scorer):
    records = rows(5)
    matrix = scorer.encode(records).matrix
    t = tg.InferInput("input", list(matrix.shape), "FP32")
    t.set_data_from_numpy(matrix)
    np.testing.assert_array_equal(client.infer(MODEL, [t]).as_numpy("score"),
                                  np.array(rest_scores(served[0], records), dtype=np.float32))


def _status(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def test_client_mistakes_are_invalid_argument_or_not_found_naming_the_field(client):
    good = triton_inputs(rows(2))
    wrong_shape = triton_inputs(rows(2))
    wrong_shape[0].set_shape([3])  # claims 3 values, sends 2
    wrong_type = triton_inputs(rows(2))
    tenure = tg.InferInput("tenure_months", [2], "BYTES")
    tenure.set_data_from_numpy(np.array([b"ten", b"two"], dtype=np.object_))
    wrong_type[0] = tenure
    unknown_dtype = triton_inputs(rows(2))
    unknown_dtype[1]._input.datatype = "FP99"
    cases = [
        (lambda: client.infer(MODEL, wrong_shape), "INVALID_ARGUMENT", "tenure_months"),
        (lambda: client.infer(MODEL, wrong_type), "INVALID_ARGUMENT", "tenure_months"),
        (lambda: client.infer(MODEL, unknown_dtype), "INVALID_ARGUMENT", "FP99"),
        (lambda: client.infer(MODEL, good[1:]), "INVALID_ARGUMENT", "tenure_months"),  # a feature missing
        (lambda: client.infer(MODEL, triton_inputs(rows(MAX_ROWS + 1))), "INVALID_ARGUMENT", "SERVING_MAX_ROWS"),
        (lambda: client.infer(MODEL, good, outputs=[tg.InferRequestedOutput("proba")]), "INVALID_ARGUMENT",
         "proba"),
        (lambda: client.infer("spend", good), "NOT_FOUND", "spend"),
        (lambda: client.infer(MODEL, good, model_version="9"), "NOT_FOUND", "version 9"),
    ]
    for call, code, named in cases:
        status, message = _status(call)
        assert status == f"StatusCode.{code}" and named in message, (status, message)
        assert client.infer(MODEL, good).as_numpy("score").shape == (2,)  # the same client goes on working


def test_typed_contents_in_the_wrong_field_and_raw_count_mismatch(served):
    with grpc.insecure_channel(served[1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = typed_request(rows(1))
        req.inputs[0].contents.ClearField("int64_contents")
        req.inputs[0].contents.fp32_contents.append(12.0)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "int64_contents" in err.value.details() and "tenure_months" in err.value.details()
        raw = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\0" * 8])
        raw.inputs.add(name="tenure_months", datatype="INT64", shape=[1])
        raw.inputs.add(name="plan", datatype="BYTES", shape=[1])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(raw, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in err.value.details()


def test_no_model_loaded_is_unavailable_and_not_ready():
    app, address, server = serve(None)
    try:
        with tg.InferenceServerClient(address) as c:
            assert c.is_server_live() and not c.is_server_ready() and not c.is_model_ready(MODEL)
            status, message = _status(lambda: c.infer(MODEL, triton_inputs(rows(1))))
            assert status == "StatusCode.UNAVAILABLE" and "no loaded version" in message
    finally:
        server.stop(0)


def test_auth_from_the_rest_declarations(scorer):
    app, address, server = serve(scorer, api_token=TOKEN)
    try:
        with tg.InferenceServerClient(address) as c:
            assert c.is_server_live() and c.is_model_ready(MODEL)  # public, as GET /v2/health/* and metadata
            assert c.get_model_metadata(MODEL).name == MODEL
            inputs = triton_inputs(rows(1))
            status, message = _status(lambda: c.infer(MODEL, inputs))
            assert status == "StatusCode.UNAUTHENTICATED" and "bearer token" in message
            status, _ = _status(lambda: c.infer(MODEL, inputs, headers={"authorization": "Bearer wrong"}))
            assert status == "StatusCode.UNAUTHENTICATED"
            ok = c.infer(MODEL, inputs, headers={"authorization": f"Bearer {TOKEN}"})
            assert ok.as_numpy("score").shape == (1,)
    finally:
        server.stop(0)
    from serving.auth import hash_token

    app, address, server = serve(scorer, tokens=f"jobs-only:{hash_token(TOKEN)}:jobs")
    try:
        with tg.InferenceServerClient(address) as c:
            status, message = _status(lambda: c.infer(MODEL, triton_inputs(rows(1)),
                                                      headers={"authorization": f"Bearer {TOKEN}"}))
            assert status == "StatusCode.PERMISSION_DENIED" and "predict" in message
    finally:
        server.stop(0)


def test_message_size_limit_is_the_body_limit(scorer):
    app, address, server = serve(scorer, max_body_bytes=2048)
    try:
        with tg.InferenceServerClient(address) as c:
            big = tg.InferInput("input", [50, len(SPEC.features)], "FP32")
            big.set_data_from_numpy(np.zeros((50, len(SPEC.features)), dtype=np.float32))  # 2400 bytes
            status, message = _status(lambda: c.infer(MODEL, [big]))
            assert status == "StatusCode.RESOURCE_EXHAUSTED" and "2048" in message
            assert c.infer(MODEL, triton_inputs(rows(1))).as_numpy("score").shape == (1,)
    finally:
        server.stop(0)


def test_a_new_version_is_served_by_grpc_at_the_same_swap(scorer):
    app, address, server = serve(scorer)
    try:
        with tg.InferenceServerClient(address) as c:
            assert c.infer(MODEL, triton_inputs([RECORD])).get_response().model_version == "1"
            app.extensions[EXTENSION_KEY].holder.install(train_scorer(SPEC, version="2"))  # what a reload does
            assert c.infer(MODEL, triton_inputs([RECORD])).get_response().model_version == "2"
            assert c.get_model_metadata(MODEL).versions == ["2"]
    finally:
        server.stop(0)
