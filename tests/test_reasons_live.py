"""Live reasons, in-process (tests/inprocess.py: a real scorer and app, an in-memory store): v1 predict with
"explain", the lookup's stored reasons, OIP's `contributions` output, the gate's verdict, and bad requests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xgboost as xgb
from inprocess import DAY, RECORD, churn_spec, make_app, train_scorer

from scoring.demo_data import generate_day
from scoring.encoding import encode
from scoring.scorer import Scorer, explain_gate_tags, read_explain_verdict

TOL = {"rtol": 2e-6, "atol": 1e-5}
OTHER = {**RECORD, "plan": "premium", "contract": "month-to-month", "region": "south", "support_calls_30d": 4}


@pytest.fixture(scope="module")
def scorer():
    return train_scorer(churn_spec())


@pytest.fixture
def app(scorer):
    app, store = make_app(dataclasses.replace(scorer))  # a copy: tests change its explain verdict
    store.add_prediction(17, 0.25)
    return app, store


def margins(scorer: Scorer, records: list[dict]) -> np.ndarray:
    return scorer.margins(scorer.encode(records).matrix)


def test_v1_predict_returns_reasons_that_sum_to_the_margin(app, scorer):
    client = app[0].test_client()
    resp = client.post("/v1/models/churn/predict", json={"records": [RECORD, OTHER], "explain": {"top_k": "all"}})
    assert resp.status_code == 200, resp.data
    items = resp.get_json()["predictions"]
    want = margins(scorer, [RECORD, OTHER])
    for item, margin in zip(items, want, strict=True):
        reasons = item["explanation"]["contributions"]
        assert [r["feature"] for r in reasons] != [] and len(reasons) == len(scorer.spec.features)
        total = item["explanation"]["bias"] + sum(r["contribution"] for r in reasons)
        np.testing.assert_allclose(total, margin, **TOL)
        sizes = [abs(r["contribution"]) for r in reasons]
        assert sizes == sorted(sizes, reverse=True)
    plan = next(r for r in items[1]["explanation"]["contributions"] if r["feature"] == "plan")
    assert plan["value"] == "premium"  # a category is one contribution, reported with its value
    region = next(r for r in items[0]["explanation"]["contributions"] if r["feature"] == "region")
    assert region["value"] is None  # missing, as the model saw it
    # the same rows give the same reasons as the core (batch writes these)
    core = scorer.contributions(scorer.encode([RECORD]).matrix).records(3)[0]
    top3 = client.post("/v1/models/churn/predict", json={"records": [RECORD], "explain": {"top_k": 3}}).get_json()
    assert top3["predictions"][0]["explanation"] == core
    plain = client.post("/v1/models/churn/predict", json={"records": [RECORD]}).get_json()
    assert "explanation" not in plain["predictions"][0]
    assert plain["predictions"][0]["score"] == top3["predictions"][0]["score"]


def test_the_lookup_returns_the_days_stored_reasons(app):
    client, store = app[0].test_client(), app[1]
    stored = [{"feature": "contract", "value": "month-to-month", "contribution": 0.8},
              {"feature": "tenure_months", "value": 2.0, "contribution": 0.4}]
    store.stored_reasons[(DAY, 17)] = stored
    body = client.get("/v1/models/churn/predictions/17?explain=1").get_json()
    assert body["explanation"] == {"source": "precomputed", "contributions": stored[:1]}
    assert body["score"] == 0.25
    assert client.get("/v1/models/churn/predictions/17?explain=true").get_json()["explanation"]["contributions"] \
        == stored
    store.stored_reasons.clear()
    assert client.get("/v1/models/churn/predictions/17?explain=true").get_json()["explanation"] is None
    assert "explanation" not in client.get("/v1/models/churn/predictions/17").get_json()


def test_oip_contributions_output_on_request(app, scorer):
    client = app[0].test_client()
    meta = client.get("/v2/models/churn").get_json()
    (out,) = [o for o in meta["outputs"] if o["name"] == "contributions"]
    assert out["parameters"]["columns"] == [*scorer.spec.feature_names, "bias"] and out["datatype"] == "FP32"
    tensors = [{"name": k, "shape": [2], "datatype": "BYTES" if isinstance(RECORD["plan"], str) and k in (
        "plan", "contract", "region", "payment_method") else "FP64", "data": [
        "" if r[k] is None else r[k] for r in (RECORD, OTHER)]} for k in scorer.spec.feature_names]
    body = {"inputs": tensors, "outputs": [{"name": "score"}, {"name": "contributions"}]}
    resp = client.post("/v2/models/churn/infer", json=body)
    assert resp.status_code == 200, resp.data
    outputs = {o["name"]: o for o in resp.get_json()["outputs"]}
    contrib = outputs["contributions"]
    assert contrib["shape"] == [2, len(scorer.spec.features) + 1]
    rows = np.asarray(contrib["data"], dtype=np.float64).reshape(contrib["shape"])
    np.testing.assert_allclose(rows.sum(axis=1), margins(scorer, [RECORD, OTHER]), **TOL)
    default = client.post("/v2/models/churn/infer", json={"inputs": tensors}).get_json()
    assert [o["name"] for o in default["outputs"]] == ["score", "label"]  # not computed unless asked for
    bad = client.post("/v2/models/churn/infer", json={**body, "outputs": [
        {"name": "contributions", "parameters": {"method": "shap"}}]})
    assert bad.status_code == 400 and "parameters.method" in bad.get_json()["error"]


def test_gate_verdict_refuses_exact_online_but_allows_approx(app, scorer):
    client = app[0].test_client()
    served = app[0].extensions["serving"].holder.current
    tags = explain_gate_tags(scorer, [RECORD, OTHER])
    assert float(tags["gate.explain_p99_ms"]) > 0 and tags["gate.explain_online"] in ("true", "false")
    read_explain_verdict(served, {"gate.explain_online": "false", "gate.explain_p99_ms": "80.5"})
    resp = client.post("/v1/models/churn/predict", json={"records": [RECORD], "explain": {"top_k": 2}})
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "explain_not_allowed" and "80.5 ms" in error["message"] and "approx" in error["message"]
    approx = client.post("/v1/models/churn/predict", json={"records": [RECORD],
                                                           "explain": {"top_k": 2, "method": "approx"}})
    assert approx.status_code == 200 and len(approx.get_json()["predictions"][0]["explanation"]["contributions"]) == 2


@pytest.mark.parametrize("explain, message", [
    (True, "'explain' must be an object"), ({"top": 3}, "'explain' must be an object"),
    ({"top_k": 0}, "'explain.top_k' must be a number >= 1"), ({"top_k": "3"}, "'explain.top_k'"),
    ({"method": "shap"}, "'explain.method' must be one of"),
])
def test_bad_explain_is_a_clear_400(app, explain, message):
    resp = app[0].test_client().post("/v1/models/churn/predict", json={"records": [RECORD], "explain": explain})
    assert resp.status_code == 400 and message in resp.get_json()["error"]["message"]


def test_both_models_sum_to_the_margin_through_the_core():
    """Regression (spend) too: margin = the predicted value."""
    from scoring.spec import load_spec

    spec = load_spec("spend")
    frame = generate_day(DAY, 300, seed=5)
    matrix = encode(spec, frame[spec.feature_names]).matrix
    booster = xgb.train({"objective": "reg:squarederror", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(matrix, label=frame[spec.label], feature_names=spec.feature_names), 10)
    scorer = Scorer.from_booster(spec, booster, "1", threads=1)
    for method in ("exact", "approx"):
        found = scorer.contributions(matrix, method)
        np.testing.assert_allclose(found.margins, scorer.predict_matrix(matrix).scores, rtol=2e-6, atol=1e-4)
