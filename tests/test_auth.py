"""Named tokens with scopes (serving/auth.py), enforced from the route declarations: the real app factory with a
real scorer (tests/inprocess.py); the job ownership tests run on the real test PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from inprocess import RECORD, make_app

from serving.auth import Authorizer, TokenConfigError, hash_token, main, parse_entries
from serving.dataplane import EXTENSION_KEY as DATAPLANE
from serving.protocols import PROTOCOLS
from serving.routes import Scope

TOKENS = {"predictor": ("tok-predict-0123456789", "predict"), "jobber": ("tok-jobs-0123456789", "jobs"),
          "jobber2": ("tok-jobs-9876543210", "jobs"), "ops": ("tok-metrics-0123456789", "metrics"),
          "admin": ("tok-all-0123456789", "*")}
ENTRIES = " ".join(f"{name}:{hash_token(tok)}:{scopes}" for name, (tok, scopes) in TOKENS.items())


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][0]}"}


@pytest.fixture
def client(scorer):
    app, _ = make_app(scorer, tokens=ENTRIES)
    return app.test_client()


def declared_auth() -> dict[str, object]:
    out: dict[str, object] = {}
    for proto in PROTOCOLS:
        out.update({f"{proto.name}.{r.endpoint}": r.auth for r in proto.routes})
        out.update({bp.name: auth for bp, auth in proto.mounts})
    return out


def test_every_route_refuses_a_missing_or_wrong_token_unless_public(scorer):
    """Walk the URL map of the app as built: each protected rule answers 401 with no token, a wrong token, a
    token of another scheme; public rules never do; the right scope gets through."""
    app, _ = make_app(scorer, tokens=ENTRIES)
    auth = declared_auth()
    client = app.test_client()
    protected = public = 0
    for rule in app.url_map.iter_rules():
        declared = auth.get(rule.endpoint, auth.get(rule.endpoint.split(".", 1)[0]))
        path = rule.rule.replace("<model>", "churn").replace("<path:path>", "index.css")
        for arg in rule.arguments - {"model", "path"}:
            path = path.replace(f"<{arg}>", "1")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if isinstance(declared, Scope):
                protected += 1
                for headers in ({}, {"Authorization": "Bearer wrong-token"},
                                {"Authorization": f"Basic {TOKENS['admin'][0]}"}, {"Authorization": "Bearer "}):
                    resp = client.open(path, method=method, headers=headers)
                    assert resp.status_code == 401, (method, path, headers, resp.status_code)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer"), path
                ok = client.open(path, method=method, headers=bearer("admin"))
                assert ok.status_code not in (401, 403), (method, path)
            else:
                public += 1
                assert client.open(path, method=method).status_code not in (401, 403), (method, path)
    assert protected >= 9 and public >= 10, (protected, public)


def test_scopes_decide_per_route(client):
    predict = {"records": [RECORD]}
    assert client.post("/v1/models/churn/predict", json=predict, headers=bearer("predictor")).status_code == 200
    # a token without the jobs scope cannot submit, read or cancel jobs
    denied = client.post("/v1/models/churn/jobs", json=predict, headers=bearer("predictor"))
    assert denied.status_code == 403 and denied.json["error"]["code"] == "forbidden"
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=bearer("predictor")).status_code == 403
    assert client.post("/v1/models/churn/jobs", json=predict, headers=bearer("jobber")).status_code == 202
    # ...and a jobs-only token cannot predict, in any protocol's shape
    assert client.post("/v1/models/churn/predict", json=predict, headers=bearer("jobber")).status_code == 403
    inv = client.post("/invocations", json={"dataframe_records": [RECORD]}, headers=bearer("jobber"))
    assert inv.status_code == 403 and inv.json["error_code"] == "PERMISSION_DENIED"
    assert client.post("/v2/models/churn/infer", json={"inputs": []}, headers=bearer("jobber")).status_code == 403


def test_metrics_and_model_details_give_anonymous_callers_no_internals(scorer):
    app, _ = make_app(scorer, tokens=ENTRIES)
    holder = app.extensions[DATAPLANE].holder
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("predictor")).status_code == 403
    assert client.get("/metrics", headers=bearer("ops")).status_code == 200
    holder.stats.last_error = "MLflow at http://mlflow:5000 said: secret detail"
    holder.stats.refused_versions["9"] = "version 9 refused: detail"
    anonymous = client.get("/v1/models/churn")
    assert anonymous.status_code == 200
    body = anonymous.json
    assert body["signature"]["inputs"] and body["loaded_version"] == scorer.version  # what a client needs
    assert not {"ref", "prediction_table", "process_started"} & set(body)
    assert set(body["reload"]) == {"poll_interval_s"}
    assert "secret detail" not in anonymous.get_data(as_text=True)
    full = client.get("/v1/models/churn", headers=bearer("predictor")).json
    assert {"ref", "prediction_table"} <= set(full) and "last_error" in full["reload"]
    # an open deployment (no token at all, the local stack) shows everything to everyone
    open_app, _ = make_app(scorer)
    assert open_app.test_client().get("/metrics").status_code == 200
    assert "last_error" in open_app.test_client().get("/v1/models/churn").json["reload"]


def test_token_entries_are_checked_at_start(scorer, tmp_path: Path):
    good = f"a:{hash_token('x' * 20)}:predict"
    for bad, reason in ((f"a:{'0' * 63}:predict", "must be name:sha256"),
                        (f"a:{hash_token('x')}:admin", "unknown scope"),
                        (f"anonymous:{hash_token('x')}:*", "reserved"), (f"{good} {good}", "listed twice")):
        with pytest.raises(TokenConfigError, match=reason):
            make_app(scorer, tokens=bad)
    assert hash_token("x" * 20) not in str(pytest.raises(TokenConfigError, parse_entries, good + "x", "t").value)
    path = tmp_path / "tokens"
    path.write_text(f"# the partner's client\n{good}\n")
    app, _ = make_app(scorer, tokens_file=path)
    assert app.test_client().post("/v1/models/churn/predict", json={"records": [RECORD]},
                                  headers={"Authorization": f"Bearer {'x' * 20}"}).status_code == 200
    with pytest.raises(TokenConfigError, match="cannot read"):
        make_app(scorer, tokens_file=tmp_path / "missing")
    # SERVING_API_TOKEN stays one client with every scope, beside named tokens
    both = Authorizer.from_config(api_token="legacy-token-123", tokens=good)
    assert [c.name for c in both.clients] == ["anonymous", "a"] and both.clients[0].allows("jobs")


def test_the_cli_makes_a_token_and_its_entry(capsys):
    assert main(["new", "partner", "predict,jobs"]) == 0
    out = capsys.readouterr().out
    token = out.split("token (give it to the client, store it nowhere else): ", 1)[1].split()[0]
    entry = out.rsplit(" ", 1)[1].strip()
    (client,) = parse_entries(entry, "cli")
    assert client.name == "partner" and client.scopes == {"predict", "jobs"}
    assert entry.split(":")[1] == hash_token(token) and token not in entry
    assert main(["new", "partner", "everything"]) == 2


# ------------------------------------------------------------------------------------ job ownership (PostgreSQL)

@pytest.fixture
def jobs_client(db_url):
    from scoring.spec import load_spec
    from serving.app import create_app
    from serving.config import Settings
    from serving.database import ServingDatabase
    from serving.model_holder import ModelHolder

    spec = load_spec("churn")
    store = ServingDatabase(spec, db_url, timeout_s=2.0).open()
    app = create_app(Settings(model="churn", database_url=db_url, tokens=ENTRIES), holder=ModelHolder(spec),
                     store=store)
    yield app.test_client()
    store.close()


def test_another_clients_job_is_404_and_keys_are_per_client(jobs_client):
    body = {"records": [RECORD]}
    key = f"order-{uuid.uuid4()}"
    mine = jobs_client.post("/v1/models/churn/jobs", json=body, headers={**bearer("jobber"), "Idempotency-Key": key})
    assert mine.status_code == 202, mine.json
    url = mine.json["status_url"]
    assert jobs_client.get(url, headers=bearer("jobber")).status_code == 200
    theirs = jobs_client.get(url, headers=bearer("jobber2"))
    assert theirs.status_code == 404 and theirs.json["error"]["code"] != "forbidden"  # not even its existence
    assert jobs_client.delete(url, headers=bearer("jobber2")).status_code == 404
    # the same key from another client is another job, not a replay of the first client's
    other = jobs_client.post("/v1/models/churn/jobs", json=body, headers={**bearer("jobber2"), "Idempotency-Key": key})
    assert other.status_code == 202 and other.json["id"] != mine.json["id"]
    replay = jobs_client.post("/v1/models/churn/jobs", json=body, headers={**bearer("jobber"), "Idempotency-Key": key})
    assert replay.status_code == 200 and replay.json["id"] == mine.json["id"]
    assert jobs_client.delete(url, headers=bearer("jobber")).status_code == 200
