"""Safe rollout through a real nginx in front of real gunicorn replicas (brought up by `make up`'s own code) against
the session's PostgreSQL and MLflow: the canary split's share and stickiness, moving the share under load, the
online shadow, the rollout commands, and the watcher (`python -m stack.rollout watch`, started by `make up`)
rolling back a canary whose scores drift.

One stack for the module, churn only (its models.yaml entry with test limits): 2 champion replicas, 1 canary
replica, no job replica; every replica logs every request's payload (SERVING_PAYLOAD_SAMPLE_RATE=1) and polls
the registry every second. Versions: `same` is the champion's own artifact registered again (a healthy canary a
version number tells apart), `weak` a one-tree model, force-approved (the planted fault: its scores drift).
The tests run in order and leave the registry as they found it.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests
import yaml

from scoring import rollout
from stack.config import StackConfig
from stack.gateway import canary_replicas, read_splits, replicas
from stack.up import down, up
from testing.model_copy import register_copy
from testing.ports import free_run

pytestmark = pytest.mark.integration

MODEL = "churn"
LIMITS = {"sticky": "entity", "window_minutes": 5, "min_requests": 100, "min_scores": 100,
          # error rate and latency are not what these tests plant: a loaded 2-core machine must not roll back
          "error_rate_increase": 0.5, "p99_ratio": 100, "score_psi": 0.25}
ENV = {"SERVING_PAYLOAD_SAMPLE_RATE": "1", "SERVING_PAYLOAD_FLUSH_S": "0.2", "SERVING_POLL_INTERVAL_S": "1",
       "SERVING_WORKERS": "1"}


@dataclass
class Rollout:
    cfg: StackConfig
    champion: str
    same: str
    weak: str
    records: list[dict]
    db_url: str

    @property
    def url(self) -> str:
        return f"{self.cfg.gateway_url}/v1/models/{MODEL}/predict"


def _train_weak(db_url: str, end: dt.date) -> str:
    from mlflow import MlflowClient

    from scoring.db import connect
    from scoring.spec import load_spec
    from scoring.training import load_training_data, train_and_log

    spec = load_spec(MODEL)
    with connect(db_url) as conn:
        data = load_training_data(conn, spec, end)
    version = train_and_log(spec, data, overrides={"n_estimators": 1, "max_depth": 1}).version
    mc = MlflowClient()
    mc.set_model_version_tag(MODEL, version, "gate.forced", "tests/test_rollout.py: a canary planted to drift")
    mc.set_model_version_tag(MODEL, version, "gate.decision", "promoted")
    return str(version)


def _records(db_url: str, n: int) -> list[dict]:
    from scoring.spec import load_spec

    spec = load_spec(MODEL)
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(f"SELECT customer_id, {', '.join(spec.feature_names)} FROM features.customer_daily "
                           f"ORDER BY snapshot_date DESC, customer_id LIMIT {n}")
        names = [d.name for d in cur.description]
        return json.loads(json.dumps([dict(zip(names, r, strict=True)) for r in cur.fetchall()], default=float))


@pytest.fixture(scope="module")
def stack(db_url: str, mlflow_server: str, trained_models: dict[str, str], demo_features: dt.date
          ) -> Iterator[Rollout]:
    from mlflow import MlflowClient

    mc = MlflowClient()
    before = dict(mc.get_registered_model(MODEL).aliases or {})
    home = Path(tempfile.mkdtemp(prefix="rollout-test-"))
    home.chmod(0o755)
    document = yaml.safe_load((Path(__file__).resolve().parent.parent / "models.yaml").read_text())
    document["models"] = {MODEL: {**document["models"][MODEL], "rollout": LIMITS}}
    (home / "models.yaml").write_text(yaml.safe_dump(document))
    saved = {k: os.environ.get(k) for k in [*ENV, "MODELS_FILE", "STACK_ROLLOUT_CHECK_S"]}
    os.environ.update({**ENV, "MODELS_FILE": str(home / "models.yaml")})
    cfg = StackConfig(home=home, external_db_url=db_url, mlflow_port=int(mlflow_server.rsplit(":", 1)[1]),
                      serving_port=free_run(1), grpc_port=free_run(1), replica_port=free_run(3), replicas=2,
                      job_replicas=0, canary_replicas=1, rollout_check_s=1.0, replica_grpc_port=free_run(2),
                      components=frozenset({"serving", "gateway"}))
    log: list[str] = []
    try:
        same = register_copy(MODEL, trained_models[MODEL])
        weak = _train_weak(db_url, demo_features + dt.timedelta(days=1))
        up(cfg, out=log.append)
        for rep in replicas(cfg, [MODEL]):
            _wait(lambda rep=rep: requests.get(f"http://{rep.address}/readyz", timeout=2).status_code == 200)
        yield Rollout(cfg, trained_models[MODEL], same, weak, _records(db_url, 300), db_url)
    finally:
        down(cfg, out=log.append)
        print("\n".join(log))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for alias in ("canary", "challenger"):
            if alias in before:
                mc.set_registered_model_alias(MODEL, alias, before[alias])
            elif alias in (mc.get_registered_model(MODEL).aliases or {}):
                mc.delete_registered_model_alias(MODEL, alias)
        mc.set_registered_model_alias(MODEL, "champion", before["champion"])
        mc.set_registered_model_tag(MODEL, rollout.PERCENT_TAG, "0")
        shutil.rmtree(home, ignore_errors=True)


def _wait(ok, timeout: float = 90, every: float = 0.3) -> None:  # noqa: ANN001 - a callable
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except requests.RequestException:
            pass
        time.sleep(every)
    raise AssertionError(f"not true after {timeout}s")


def _start(s: Rollout, version: str, percent: float) -> None:
    """The canary at `percent` once its replica serves `version` (what `stack.rollout start` does)."""
    from stack.rollout import _wait_and_apply

    with psycopg.connect(s.db_url, autocommit=True) as conn:
        rollout.start(MODEL, version, percent, conn)
    _wait_and_apply(s.cfg, MODEL, version, lambda _: None, timeout=60)
    assert read_splits(s.cfg)[MODEL].percent == percent


def _share(s: Rollout, percent: float) -> None:
    from stack.rollout import apply

    rollout.set_share(MODEL, percent)
    apply(s.cfg, out=lambda _: None)


def _versions(s: Rollout, n: int, threads: int = 4, headers: dict | None = None) -> collections.Counter:
    """n single-row predicts through the gateway: the versions that answered."""
    seen: collections.Counter = collections.Counter()
    failed: list[str] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        with requests.Session() as session:
            for i in range(k, n, threads):
                body = {"records": [s.records[i % len(s.records)]]}
                resp = session.post(s.url, json=body, headers=headers, timeout=30)
                with lock:
                    if resp.status_code == 200:
                        seen[resp.json()["model_version"]] += 1
                    else:
                        failed.append(f"{resp.status_code} {resp.text[:200]}")

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert failed == [], failed[:5]
    return seen


def test_split_matches_the_share_over_2000_requests(stack: Rollout) -> None:
    _start(stack, stack.same, 10)
    seen = _versions(stack, 2000)
    assert set(seen) == {stack.champion, stack.same}, seen
    observed = 100 * seen[stack.same] / 2000
    assert abs(observed - 10) <= 2, (observed, seen)


def test_sticky_entity_keeps_one_version(stack: Rollout) -> None:
    _share(stack, 50)
    per_entity = {}
    for entity in range(40):
        seen = _versions(stack, 8, threads=1, headers={"X-Entity-ID": f"customer-{entity}"})
        assert len(seen) == 1, (entity, seen)  # the same version for every request of an entity
        per_entity[entity] = next(iter(seen))
    assert set(per_entity.values()) == {stack.champion, stack.same}, per_entity  # and both versions in use


def test_moving_the_share_under_load_fails_no_request(stack: Rollout) -> None:
    from test_gateway import Load

    body = json.dumps({"records": [stack.records[0]]})
    versions: collections.Counter = collections.Counter()

    def call() -> requests.Response:
        resp = requests.post(stack.url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        if resp.status_code == 200:
            versions[resp.json()["model_version"]] += 1
        return resp

    with Load([call], threads=3) as load:
        for percent in (0, 10, 50, 100, 0, 30):
            _share(stack, percent)
            time.sleep(0.7)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50 and set(versions) == {stack.champion, stack.same}, (load.ok, versions)


def _shadow_of_weak(s: Rollout):  # noqa: ANN202 - serving.shadow.OnlineShadow
    """No canary share; the weak version as `challenger`, shadowed by a pass-by-hand OnlineShadow that has
    already passed the rows logged before the calling test."""
    from mlflow import MlflowClient

    from scoring.registry import CHALLENGER
    from scoring.spec import load_spec
    from serving.model_holder import ModelHolder
    from serving.shadow import OnlineShadow

    _share(s, 0)
    MlflowClient().set_registered_model_alias(MODEL, CHALLENGER, s.weak)
    spec = load_spec(MODEL)
    shadow = OnlineShadow(spec, s.db_url, ModelHolder(spec, ref=CHALLENGER, allow_ungated=True),
                          interval_s=0, lag_s=0.3)
    shadow.holder.check_now()
    shadow.step()  # from the watermark on: the rows logged before the test are not its
    return shadow


def test_online_shadow_answers_go_to_the_payload_log_never_to_the_client(stack: Rollout) -> None:
    from scoring.monitoring.shadow import online_challenger_checks

    shadow = _shadow_of_weak(stack)
    spec = shadow.spec
    rid = f"shadow-{uuid.uuid4().hex[:8]}"
    answered = set()
    with requests.Session() as session:
        for i in range(60):
            resp = session.post(stack.url, json={"records": [stack.records[i]]}, headers={"X-Request-ID": f"{rid}-{i}"},
                                timeout=30)
            assert resp.status_code == 200
            answered.add(resp.json()["model_version"])
    assert answered == {stack.champion}  # the challenger never answers a client
    time.sleep(1.0)  # the replicas' payload writers flush every 0.2 s; the shadow waits lag_s more
    _wait(lambda: shadow.step() >= 0 and _shadow_rows(stack, rid) >= 60, timeout=20, every=0.5)
    with psycopg.connect(stack.db_url) as conn:
        pairs = conn.execute(
            "SELECT s.model_version, p.model_version, s.score, p.score FROM ops.online_payloads s "
            "JOIN ops.online_payloads p ON p.request_id = s.request_id AND p.route <> 'shadow' "
            "AND p.logged_at = s.logged_at WHERE s.route = 'shadow' AND s.request_id LIKE %s", (f"{rid}-%",)
        ).fetchall()
        assert len(pairs) == 60 and {(a, b) for a, b, _, _ in pairs} == {(int(stack.weak), int(stack.champion))}
        assert any(abs(a - b) > 1e-6 for _, _, a, b in pairs)  # a different model: different scores
        again = shadow.step()  # a second pass writes nothing twice
        assert again == 0 and _shadow_rows(stack, rid) == 60
        checks = {c.check: c for c in online_challenger_checks(conn, spec, dt.datetime.now(dt.UTC).date())}
    assert checks["online.challenger.version"].value == int(stack.weak)
    assert checks["online.challenger.rows"].value >= 60
    assert 0 <= checks["online.challenger.agreement"].value <= 1
    shadow.stop()


def test_a_logged_row_the_challenger_cannot_take_is_skipped_not_a_stall(stack: Rollout) -> None:
    """A payload row logged under another spec (here a `plan` this spec no longer knows) is skipped and counted:
    the rows beside it are shadowed, and a page of such rows alone does not hold the shadow at it."""
    from serving.payload_log import COLUMNS

    shadow = _shadow_of_weak(stack)
    rid = f"skip-{uuid.uuid4().hex[:8]}"
    with requests.Session() as session:
        for i in range(5):
            resp = session.post(stack.url, json={"records": [stack.records[i]]}, headers={"X-Request-ID": f"{rid}-{i}"},
                                timeout=30)
            assert resp.status_code == 200
    names = ", ".join(COLUMNS)
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        _wait(lambda: conn.execute("SELECT count(*) FROM ops.online_payloads WHERE request_id LIKE %s",
                                   (f"{rid}-%",)).fetchone()[0] == 5, timeout=20, every=0.2)
        # a copy of a logged row, as an older spec logged it: a category this one does not know
        conn.execute(f"INSERT INTO ops.online_payloads ({names}) SELECT model_name, log_date, logged_at, model_version,"
                     " route, %s, entity_id, jsonb_set(features, '{plan}', '\"legacy\"'), score, label "
                     "FROM ops.online_payloads WHERE request_id = %s", (f"{rid}-bad", f"{rid}-2"))
    time.sleep(0.5)
    _wait(lambda: shadow.step() >= 0 and _shadow_rows(stack, rid) >= 5, timeout=20, every=0.5)
    with psycopg.connect(stack.db_url) as conn:
        shadowed = {r[0] for r in conn.execute("SELECT request_id FROM ops.online_payloads WHERE route = 'shadow' "
                                                "AND request_id LIKE %s", (f"{rid}-%",))}
    assert shadowed == {f"{rid}-{i}" for i in range(5)} and shadow.skipped == 1
    shadow.stop()


def _shadow_rows(s: Rollout, rid: str) -> int:
    with psycopg.connect(s.db_url) as conn:
        return conn.execute("SELECT count(*) FROM ops.online_payloads WHERE route = 'shadow' AND request_id LIKE %s",
                            (f"{rid}-%",)).fetchone()[0]


def test_abort_and_promote_are_one_command_each(stack: Rollout, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from stack.rollout import main

    for key, value in stack.cfg.to_env().items():  # the CLI reads the stack's settings from the environment
        monkeypatch.setenv(key, value)
    _start(stack, stack.same, 20)
    assert main(["abort", MODEL, "--reason", "seen enough"]) == 0
    assert rollout.read_state(MODEL).percent == 0 and MODEL not in read_splits(stack.cfg)
    mc = MlflowClient()
    assert mc.get_model_version(MODEL, stack.same).tags[rollout.REASON_TAG] == "seen enough"
    assert main(["promote", MODEL]) == 0
    aliases = mc.get_registered_model(MODEL).aliases
    assert aliases["champion"] == stack.same and "canary" not in aliases
    assert mc.get_model_version(MODEL, stack.same).tags[rollout.DECISION_TAG] == "promoted"
    with psycopg.connect(stack.db_url) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM ops.rollout_events WHERE model_name = %s "
                                              "ORDER BY id DESC LIMIT 3", (MODEL,)).fetchall()]
    assert actions == ["promote", "abort", "start"]
    mc.set_registered_model_alias(MODEL, "champion", stack.champion)  # back, for the next test and the session
    _wait(lambda: all(requests.get(f"http://{r.address}/readyz", timeout=2).json()["model_version"]
                      == stack.champion for r in replicas(stack.cfg, [MODEL])), timeout=30)


def test_a_drifting_canary_is_rolled_back_by_the_watcher(stack: Rollout) -> None:
    """The watcher `make up` started (every second here) sees the canary's logged scores drift from the
    champion's over the same window, moves its share to 0 and records why."""
    from mlflow import MlflowClient

    assert any(r.name == "serving-churn-canary-1" for r in canary_replicas(stack.cfg, [MODEL]))
    _start(stack, stack.weak, 50)
    seen = _versions(stack, 600)
    assert seen[stack.weak] > 0, seen  # (the watcher may have rolled it back before the last of these)

    def last_event() -> tuple:
        with psycopg.connect(stack.db_url) as conn:
            return conn.execute("SELECT action, version, reason, evidence FROM ops.rollout_events "
                                "WHERE model_name = %s ORDER BY id DESC LIMIT 1", (MODEL,)).fetchone()

    # the share goes to 0 in the registry first, then the event is written: wait for the event
    _wait(lambda: last_event()[0] == "rollback", timeout=60, every=0.5)
    assert rollout.read_state(MODEL).percent == 0
    action, version, reason, evidence = last_event()
    assert (action, str(version)) == ("rollback", stack.weak) and "score_psi" in reason, reason
    assert evidence["canary"]["version"] == stack.weak and evidence["canary"]["scores"] >= 100
    tags = MlflowClient().get_model_version(MODEL, stack.weak).tags
    assert tags[rollout.DECISION_TAG] == "rolled_back" and "score_psi" in tags[rollout.REASON_TAG]
    _wait(lambda: MODEL not in read_splits(stack.cfg), timeout=10)
    # the watcher writes the split down, then reloads nginx (whose old workers finish what they hold): on a
    # loaded machine the first requests after the file changed still met the canary
    _wait(lambda: set(_versions(stack, 20)) == {stack.champion}, timeout=30, every=0.5)
    assert set(_versions(stack, 100)) == {stack.champion}  # every request on the champion again
    assert "ROLLED BACK" in stack.cfg.log_file("rollout").read_text()
