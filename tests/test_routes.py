"""Routes declared once, and the one prediction path behind every protocol, in-process (tests/inprocess.py: a
real scorer and holder, an in-memory store; no PostgreSQL, no MLflow)."""

from __future__ import annotations

import pytest
from flask import Flask
from inprocess import RECORD, churn_spec, make_app
from prometheus_client import REGISTRY

from scoring.encoding import encode
from serving import app as app_module
from serving.auth import Authorizer
from serving.protocols import PROTOCOLS
from serving.routes import PUBLIC, Protocol, Scope, UndeclaredRouteError, install, json_answer

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMES = churn_spec().feature_names
ROW = encode(churn_spec(), [{**RECORD, "region": "north", "data_usage_gb": 1.0}]).matrix[0].astype(float).tolist()
INFER = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(NAMES)], "data": ROW}]}
SPLIT = {"dataframe_split": {"columns": NAMES, "data": [ROW]}}


@pytest.fixture
def served(scorer):
    return make_app(scorer, max_rows=3)


def declarations() -> dict[str, tuple[str, object]]:
    out: dict[str, tuple[str, object]] = {}
    for proto in PROTOCOLS:
        for r in proto.routes:
            out[f"{proto.name}.{r.endpoint}"] = (r.rule, r.auth)
        for bp, auth in proto.mounts:
            out[bp.name] = ("*", auth)
    return out


def test_every_rule_of_the_app_is_declared_and_its_auth_enforced(scorer):
    """Walk the URL map: each rule has a declaration; with a token set, protected ones refuse a request
    without it (before anything else is checked) and public ones never ask for it."""
    app, _ = make_app(scorer, api_token=TOKEN)
    decl = declarations()
    client = app.test_client()
    seen = 0
    for rule in app.url_map.iter_rules():
        found = decl.get(rule.endpoint) or decl.get(rule.endpoint.split(".", 1)[0])
        assert found is not None, f"{rule.rule} ({rule.endpoint}) has no declaration"
        assert found[0] in (rule.rule, "*"), (rule.rule, found)
        path = rule.rule.replace("<model>", "churn").replace("<path:path>", "index.css")
        for arg in rule.arguments - {"model", "path"}:
            path = path.replace(f"<{arg}>", "1")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            resp = client.open(path, method=method)
            if isinstance(found[1], Scope):
                assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer"), path
            else:
                assert resp.status_code != 401, path
            seen += 1
    assert seen == 27  # (rule, method) pairs


def test_create_app_refuses_an_undeclared_route(monkeypatch, scorer):
    def sneak_in(app: Flask, model: str) -> None:
        app.add_url_rule("/debug/<thing>", "debug", lambda thing: thing)

    monkeypatch.setattr(app_module, "register_middleware", sneak_in)
    with pytest.raises(UndeclaredRouteError, match=r"GET /debug/<thing> \(endpoint 'debug'\) has no declaration"):
        make_app(scorer)


def test_install_checks_the_whole_url_map_and_auth_values():
    app = Flask(__name__, static_folder=None)
    app.add_url_rule("/raw", "raw", lambda: "x", methods=["POST"])
    with pytest.raises(UndeclaredRouteError, match="POST /raw"):
        install(app, [], authorizer=Authorizer.from_token(None), model="churn")
    proto = Protocol("x", "", {}, lambda err: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="auth must be"):
        proto.route("GET", "/y", auth="protected", summary="", responses={})
    assert proto.route("GET", "/y", auth=PUBLIC, summary="", responses={200: json_answer("ok")})


def test_auth_errors_in_each_protocols_shape(scorer):
    app, _ = make_app(scorer, api_token=TOKEN)
    client = app.test_client()
    assert client.post("/v1/models/churn/predict", json={"records": [RECORD]}).json["error"]["code"] == "unauthorized"
    assert client.post("/invocations", json=SPLIT).json["error_code"] == "UNAUTHENTICATED"
    assert set(client.post("/v2/models/churn/infer", json=INFER).json) == {"error"}
    wrong = client.post("/v1/models/churn/predict", json={"records": [RECORD]}, headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401
    ok = client.post("/v1/models/churn/predict", json={"records": [RECORD]}, headers=AUTH)
    assert ok.status_code == 200
    assert client.get("/v1/models/churn").status_code == 200 and client.get("/docs/").status_code == 200


def _rows(source: str) -> float:
    return REGISTRY.get_sample_value("serving_predicted_rows_total", {"model": "churn", "source": source}) or 0.0


def test_every_protocol_scores_through_the_one_path(served, scorer):
    """The same row through /v1, /invocations and /v2 gives the scorer's prediction, and each counts its rows."""
    app, _ = served
    client = app.test_client()
    want = scorer.score([{**RECORD, "region": "north", "data_usage_gb": 1.0}])
    before = _rows("live")
    v1 = client.post("/v1/models/churn/predict", json={"records": [{**RECORD, "region": "north",
                                                                    "data_usage_gb": 1.0}]}).json
    assert v1["predictions"] == want.records() and v1["model_version"] == "1"
    assert client.post("/invocations", json=SPLIT).json == {"predictions": want.values().tolist()}
    out = {o["name"]: o["data"] for o in client.post("/v2/models/churn/infer", json=INFER).json["outputs"]}
    assert out["score"] == [float(want.scores[0])] and out["label"] == [int(want.labels[0])]
    assert _rows("live") == before + 3


@pytest.mark.parametrize("path, body, shape", [
    ("/v1/models/churn/predict", {"records": [RECORD] * 4}, lambda b: b["error"]["code"] == "too_many_rows"),
    ("/invocations", {"dataframe_split": {"columns": NAMES, "data": [ROW] * 4}},
     lambda b: b["error_code"] == "BAD_REQUEST"),
    ("/v2/models/churn/infer", {"inputs": [{**INFER["inputs"][0], "shape": [4, len(NAMES)], "data": ROW * 4}]},
     lambda b: "limit is 3" in b["error"]),
])
def test_row_limit_is_one_rule_in_each_protocols_shape(served, path, body, shape):
    resp = served[0].test_client().post(path, json=body)
    assert resp.status_code == 413 and shape(resp.json), resp.json


@pytest.mark.parametrize("path, body, field", [
    ("/v1/models/churn/predict", {"records": [RECORD]}, lambda b: b["error"]["code"]),
    ("/invocations", SPLIT, lambda b: b["error_code"]),
    ("/v2/models/churn/infer", INFER, lambda b: b["error"]),
])
def test_body_limit_and_no_model_in_each_protocols_shape(path, body, field):
    app, _ = make_app(None, max_body_bytes=2048)
    client = app.test_client()
    big = client.post(path, data=b"{" + b" " * 4096 + b"}", content_type="application/json")
    assert big.status_code == 413 and field(big.json), big.json
    none = client.post(path, json=body)
    assert none.status_code == 503 and field(none.json) and none.headers["Retry-After"] == "5", none.json


def test_unknown_model_is_checked_from_the_declaration(served):
    client = served[0].test_client()
    v1 = client.post("/v1/models/spend/predict", json={"records": [RECORD]})
    assert v1.status_code == 404 and v1.json["error"]["code"] == "unknown_model"
    assert "churn" in v1.json["error"]["message"]
    oip = client.post("/v2/models/spend/infer", json=INFER)
    assert oip.status_code == 404 and "unknown model 'spend'" in oip.json["error"]
    assert client.post("/v1/models/spend/jobs", json={"records": [RECORD]}).status_code == 404


def test_cache_first_and_lookups_through_the_store(served, scorer):
    app, store = served
    client = app.test_client()
    store.add_prediction(17, 0.75)
    store.features[18] = (store.latest_date(), {**RECORD, "region": "north"})
    records = [{**RECORD, "customer_id": 17}, {**RECORD, "customer_id": 99}]
    body = client.post("/v1/models/churn/predict", json={"records": records, "fallback": "precomputed"}).json
    assert [p["source"] for p in body["predictions"]] == ["precomputed", "live"]
    assert body["predictions"][0]["score"] == 0.75 and body["predictions"][1]["model_version"] == "1"
    assert body["predictions"][1]["score"] == scorer.score([RECORD]).records()[0]["score"]
    assert client.get("/v1/models/churn/predictions/17").json["score"] == 0.75
    live = client.get("/v1/models/churn/predictions/18?fallback=live").json
    assert live["source"] == "live" and live["score"] == scorer.score([{**RECORD, "region": "north"}]).scores[0]
    assert client.get("/v1/models/churn/predictions/19").status_code == 404
    store.up = False
    down = client.get("/v1/models/churn/predictions/17")
    assert down.status_code == 503 and down.json["error"]["code"] == "database_unavailable"
    # the cache is an optimisation: with the database down, cache-first scores live
    again = client.post("/v1/models/churn/predict", json={"records": records, "fallback": "precomputed"})
    assert [p["source"] for p in again.json["predictions"]] == ["live", "live"]
    assert client.get("/readyz").status_code == 503


def test_jobs_through_the_store(served):
    app, store = served
    client = app.test_client()
    sub = client.post("/v1/models/churn/jobs", json={"records": [RECORD]}, headers={"Idempotency-Key": "a"})
    assert sub.status_code == 202 and sub.headers["Location"] == sub.json["status_url"]
    again = client.post("/v1/models/churn/jobs", json={"records": [RECORD]}, headers={"Idempotency-Key": "a"})
    assert again.status_code == 200 and again.json["id"] == sub.json["id"]
    clash = client.post("/v1/models/churn/jobs", json={"records": [{**RECORD, "plan": "premium"}]},
                        headers={"Idempotency-Key": "a"})
    assert clash.status_code == 422 and clash.json["error"]["code"] == "idempotency_key_reused"
    bad = client.post("/v1/models/churn/jobs", json={"records": [{**RECORD, "plan": "gold"}]})
    assert bad.status_code == 422 and bad.json["error"]["column"] == "plan" and len(store.jobs) == 1
    assert client.delete(sub.json["status_url"]).json["status"] == "cancelled"
    store.up = False
    down = client.get(sub.json["status_url"])
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
