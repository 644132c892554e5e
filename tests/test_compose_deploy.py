"""The compose deployment for real (issue 19): built, started and driven end to end on a real Docker engine.

One deployment per run (its own compose project name, host ports and generated `.env` of random secrets), brought
up once by the module fixture and driven only through its published ports as a user would: features seeded by
the one-shot `demo-seed` service, both models trained and the day predicted through Airflow's REST API, then the
gateway's paths. The deployment's promises are then checked on the running containers, in an order where each
step leaves it as the next expects: ports, roles, users; a replica killed, a replica set scaled, a new image
rolled out (each under side-effect-free load, 0 failures); a restart of the whole deployment (data kept).
Torn down with `down -v`. `make test-compose` runs this file alone; the fast lane skips it (marker services).

Costs (cold: nothing cached; warm: the images and the wheelhouse cached): see the README section "Deploying with
Docker Compose"; this run's figures are printed at the end ([compose] lines on stderr).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import secrets
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from scoring.encoding import encode
from scoring.spec import load_specs
from testing.compose import demo, engine, rollout
from testing.compose.deployment import Deployment, prepare, write_env
from testing.compose.engine import CACHE, run, say
from testing.compose.images import build_platform
from testing.compose.load import fresh, load
from testing.ports import free_run

pytestmark = [pytest.mark.services, pytest.mark.integration, pytest.mark.compose, pytest.mark.timeout(3600)]

CUSTOMERS = 2000
DAYS = 35  # training: 28 days of history + 7 of holdout (models.yaml)
ENTITY = 42
PLATFORM_UID = 50000  # the Dockerfile's unprivileged user
# Every long-running service of docker-compose.yaml; the one-shot jobs must have exited 0.
ONE_SHOT = {"db-init", "airflow-init", "mlflow-init"}
TIMINGS: dict[str, float] = {}


def online_models() -> list[str]:
    return [name for name, spec in load_specs().items() if spec.serving.online]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, dict]]:
    if os.geteuid() != 0 and not engine.engine_answers():
        pytest.skip("no Docker engine answers and only root can start one here")
    began = time.monotonic()
    engine.ensure_packages()
    dockerd = engine.start_dockerd()
    engine.ensure_compose()
    base = free_run(3)
    project = f"msp-test-{uuid.uuid4().hex[:8]}"
    dep, timings = prepare(project, tmp_path_factory.mktemp("compose") / ".env", gateway_port=base,
                           airflow_port=base + 1, grpc_port=base + 2, platform_tag=f"msp-test/platform:{project}")
    TIMINGS.update(timings)
    today = dt.datetime.now(dt.UTC).date()
    try:
        # the features are seeded while the rest comes up (demo-seed needs only db-init's schema)
        with ThreadPoolExecutor(1) as pool:
            coming_up = pool.submit(dep.up)
            dep.wait_completed("db-init")
            TIMINGS["seed features (during up)"] = demo.seed(dep, today, DAYS, CUSTOMERS)
            TIMINGS["up -d --wait (to healthy)"] = coming_up.result()
        say(f"{project}: healthy in {TIMINGS['up -d --wait (to healthy)']:.0f}s; gateway {dep.gateway}, "
            f"Airflow {dep.airflow}")
        driven = demo.drive(dep, today, DAYS, CUSTOMERS, seeded=True)
        memory = dep.memory_mib()
        say(f"memory after the demo (MiB, total {sum(memory.values()):.0f}): "
            + ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(memory.items())))
        TIMINGS.update(driven["timings"])
        yield dep, {**driven, "day": today}
    except BaseException:
        say(f"logs at failure:\n{dep.logs(tail=60)}")
        raise
    finally:
        t = time.monotonic()
        dep.down()
        run(["docker", "image", "rm", "-f", f"msp-test/platform:{project}", f"msp-test/platform:{project}-next"],
            check=False)
        TIMINGS["down -v"] = time.monotonic() - t
        TIMINGS["compose test total"] = time.monotonic() - began
        say("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()))
        say(f"fixture caches under {CACHE} (delete them for a cold run)")
        engine.stop_dockerd(dockerd)


def auth(dep: Deployment) -> dict[str, str]:
    return {"Authorization": f"Bearer {dep.token}"}


def record(model: str, day: dt.date, entity: int = ENTITY) -> dict:
    spec = load_specs()[model]
    return {spec.source.entity_key: entity, **demo.features_of(model, day, CUSTOMERS, entity)}


def psql(dep: Deployment, query: str, role: str | None = None) -> tuple[int, str]:
    """A query from inside the network (the postgres container's psql), as the admin or as a platform role."""
    if role is None:
        argv = ["psql", "-U", dep.env["POSTGRES_USER"], "-d", "serving", "-At", "-c", query]
        out = dep.exec("postgres", *argv, check=False)
    else:
        password = dep.env[f"POSTGRES_{role.removeprefix('platform_').upper()}_PASSWORD"]
        out = dep.compose("exec", "-T", "-e", f"PGPASSWORD={password}", "postgres", "psql", "-h", "127.0.0.1",
                          "-U", role, "-d", "serving", "-At", "-c", query, check=False)
    return out.returncode, (out.stdout + out.stderr).strip()


# --- up, and the user's paths through the gateway ------------------------------------------------------------

def test_every_service_is_up_and_the_jobs_completed(deployed) -> None:
    dep, _ = deployed
    states = {c["Service"]: c for c in dep.containers(all_states=True)}
    for service in ONE_SHOT:
        assert states[service]["State"] == "exited" and states[service]["ExitCode"] == 0, states[service]
    long_running = {s: c for s, c in states.items() if s not in ONE_SHOT and s != "demo-seed"}
    bad = {s: (c["State"], c.get("Health")) for s, c in long_running.items()
           if c["State"] != "running" or c.get("Health") not in ("healthy", "")}
    assert not bad, bad
    assert {f"serving-{m}" for m in online_models()} <= set(long_running)
    assert {"postgres", "redis", "mlflow", "gateway", "airflow-worker"} <= set(long_running)


def test_the_day_is_predicted_and_queried_from_inside_the_network(deployed) -> None:
    dep, driven = deployed
    for model, spec in load_specs().items():
        code, out = psql(dep, f"SELECT count(*), count(DISTINCT model_version) FROM {spec.prediction_table} "
                              f"WHERE prediction_date = '{driven['day']}'")
        assert code == 0, out
        rows, versions = map(int, out.split("|"))
        assert rows == CUSTOMERS and versions == 1, (model, out)


def test_lookup_and_live_give_the_same_answer_for_a_customer(deployed) -> None:
    dep, driven = deployed
    model = "churn"
    lookup = requests.get(f"{dep.gateway}/v1/models/{model}/predictions/{ENTITY}", headers=auth(dep), timeout=10)
    assert lookup.status_code == 200, lookup.text
    found = lookup.json()
    assert found["source"] == "precomputed" and found["prediction_date"] == str(driven["day"])
    live = requests.post(f"{dep.gateway}/v1/models/{model}/predict", headers=auth(dep), timeout=10,
                         json={"records": [record(model, driven["day"])]})
    assert live.status_code == 200, live.text
    item = live.json()["predictions"][0]
    assert str(live.json()["model_version"]) == str(found["model_version"])
    assert math.isclose(item["score"], found["score"], rel_tol=1e-6), (item, found)


def test_without_a_token_the_gateway_answers_401(deployed) -> None:
    dep, driven = deployed
    for method, path, body in (("GET", f"/v1/models/churn/predictions/{ENTITY}", None),
                               ("POST", "/v1/models/churn/predict", {"records": [record("churn", driven["day"])]}),
                               ("POST", "/v1/models/churn/jobs", {"records": [record("churn", driven["day"])]}),
                               ("POST", "/models/churn/invocations", {"dataframe_records": [{"x": 1}]})):
        resp = requests.request(method, dep.gateway + path, json=body, timeout=10)
        assert resp.status_code == 401, (path, resp.status_code, resp.text)
        wrong = requests.request(method, dep.gateway + path, json=body, timeout=10,
                                 headers={"Authorization": f"Bearer {secrets.token_urlsafe(32)}"})
        assert wrong.status_code == 401, (path, wrong.status_code)


def test_an_async_job_with_a_token(deployed) -> None:
    dep, driven = deployed
    body = {"records": [record("churn", driven["day"], e) for e in (ENTITY, ENTITY + 1)]}
    submitted = requests.post(f"{dep.gateway}/v1/models/churn/jobs", json=body, headers=auth(dep), timeout=10)
    assert submitted.status_code == 202, submitted.text
    url = dep.gateway + submitted.json()["status_url"]
    deadline = time.monotonic() + 120
    while (job := requests.get(url, headers=auth(dep), timeout=10).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["status"] == "done", job
    live = requests.post(f"{dep.gateway}/v1/models/churn/predict", json=body, headers=auth(dep), timeout=10).json()
    assert [p["score"] for p in job["predictions"]] == [p["score"] for p in live["predictions"]]


def test_mlflow_invocations_and_open_inference_through_the_gateway(deployed) -> None:
    dep, driven = deployed
    spec = load_specs()["spend"]
    # a customer with every feature present (an OIP integer tensor cannot carry a missing value)
    rec = next(r for e in range(ENTITY, ENTITY + 50) if None not in (r := record("spend", driven["day"], e)).values())
    features = {k: v for k, v in rec.items() if k != spec.source.entity_key}
    live = requests.post(f"{dep.gateway}/v1/models/spend/predict", json={"records": [rec]}, headers=auth(dep),
                         timeout=10).json()["predictions"][0]
    # MLflow's scoring protocol takes the model's signature: the encoded matrix (category codes), as MLflow's own
    # `models serve` would for this artifact
    matrix = encode(spec, [features]).matrix.astype("float64").tolist()
    inv = requests.post(f"{dep.gateway}/models/spend/invocations", headers=auth(dep), timeout=10,
                        json={"dataframe_split": {"columns": list(spec.feature_names), "data": matrix}})
    assert inv.status_code == 200, inv.text
    assert math.isclose(inv.json()["predictions"][0], live["prediction"], rel_tol=1e-6), (inv.json(), live)
    kinds = {"category": "BYTES", "int": "INT64", "float": "FP64"}
    inputs = [{"name": f.name, "shape": [1], "datatype": kinds[f.type], "data": [features[f.name]]}
              for f in spec.features]
    oip = requests.post(f"{dep.gateway}/v2/models/spend/infer", json={"inputs": inputs}, headers=auth(dep),
                        timeout=10)
    assert oip.status_code == 200, oip.text
    assert math.isclose(oip.json()["outputs"][0]["data"][0], live["prediction"], rel_tol=1e-5), oip.json()
    assert requests.get(f"{dep.gateway}/v2/models/spend/ready", timeout=10).status_code == 200


def test_open_inference_over_grpc_through_the_gateway(deployed) -> None:
    """tritonclient.grpc at the gateway's published gRPC port: the model named in the `model` metadata, the token
    in `authorization`; the same scores as the REST path, and a missing token is UNAUTHENTICATED."""
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    from testing.oip_client import triton_inputs

    dep, driven = deployed
    spec = load_specs()["churn"]
    records = [record("churn", driven["day"], e) for e in (ENTITY, ENTITY + 1, ENTITY + 2)]
    live = requests.post(f"{dep.gateway}/v1/models/churn/predict", json={"records": records}, headers=auth(dep),
                         timeout=10).json()
    features = [{k: v for k, v in r.items() if k != spec.source.entity_key} for r in records]
    with tg.InferenceServerClient(dep.grpc) as client:
        signed = {"model": "churn", "authorization": f"Bearer {dep.token}"}
        assert client.is_server_live() and client.is_model_ready("churn", headers=signed)
        result = client.infer("churn", triton_inputs(spec, features), headers=signed)
        got = [float(x) for x in result.as_numpy("score")]
        assert got == pytest.approx([p["score"] for p in live["predictions"]], rel=1e-6)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("churn", triton_inputs(spec, features), headers={"model": "churn"})
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED", caught.value


# --- the deployment's promises -------------------------------------------------------------------------------

def _published(dep: Deployment) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for c in dep.containers():
        for pub in c.get("Publishers") or []:
            if pub.get("PublishedPort"):
                out.setdefault(c["Service"], set()).add(pub["TargetPort"])
    return out


def _connects(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def test_only_the_gateway_is_published(deployed) -> None:
    dep, _ = deployed
    assert _published(dep) == {"gateway": {8000, 8001, 8080}}, _published(dep)
    assert _connects("127.0.0.1", int(dep.env["GATEWAY_PORT"]))
    assert _connects("127.0.0.1", int(dep.env["GATEWAY_GRPC_PORT"]))
    assert _connects("127.0.0.1", int(dep.env["AIRFLOW_PORT"]))
    # the data ports exist inside (the containers listen) but no host port leads to them
    for c in dep.containers():
        for pub in c.get("Publishers") or []:
            if c["Service"] != "gateway":
                assert not pub.get("PublishedPort"), (c["Service"], pub)
    # Airflow's API through the gateway's second port: its own login (401 without)
    assert requests.get(f"{dep.airflow}/api/v2/dags", timeout=10).status_code == 401
    assert requests.get(f"{dep.airflow}/api/v2/monitor/health", timeout=10).status_code == 200


def test_the_serving_role_cannot_write_predictions(deployed) -> None:
    dep, driven = deployed
    code, out = psql(dep, f"SELECT count(*) FROM predictions.churn WHERE prediction_date = '{driven['day']}'",
                     role="platform_serving")
    assert code == 0 and int(out) == CUSTOMERS, out
    for statement in ("DELETE FROM predictions.churn", "UPDATE predictions.churn SET score = 0",
                      "INSERT INTO features.customer_daily (snapshot_date, customer_id) VALUES ('2001-01-01', 1)"):
        code, out = psql(dep, statement, role="platform_serving")
        assert code != 0 and "permission denied" in out, (statement, out)
    code, out = psql(dep, "DELETE FROM predictions.churn WHERE false", role="platform_batch")
    assert code == 0, out  # the batch role owns them
    code, out = psql(dep, "INSERT INTO features.customer_daily (snapshot_date, customer_id) VALUES "
                          "('2001-01-01', 1)", role="platform_batch")
    assert code != 0 and "permission denied" in out, out  # features are the features role's


def test_mlflow_wants_credentials(deployed) -> None:
    dep, _ = deployed
    probe = ("import sys, urllib.request, base64\n"
             "req = urllib.request.Request('http://mlflow:5000/api/2.0/mlflow/registered-models/search')\n"
             "if len(sys.argv) > 1: req.add_header('Authorization', 'Basic ' + base64.b64encode("
             "sys.argv[1].encode()).decode())\n"
             "try: print(urllib.request.urlopen(req, timeout=10).status)\n"
             "except urllib.error.HTTPError as e: print(e.code)\n")
    anonymous = dep.exec("worker-churn", "python", "-c", probe).stdout.strip()
    assert anonymous == "401", anonymous
    signed_in = dep.compose("exec", "-T", "worker-churn", "sh", "-c",
                            'python -c "$0" "worker:$MLFLOW_TRACKING_PASSWORD"', probe).stdout.strip()
    assert signed_in == "200", signed_in


def test_services_run_as_unprivileged_users(deployed) -> None:
    dep, _ = deployed
    uids = {}
    for c in dep.containers():
        pid = run(["docker", "inspect", "--format", "{{.State.Pid}}", c["Name"]]).stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
        uids[c["Name"]] = (c["Service"], int(next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
                                             .split()[1]))
    assert all(uid != 0 for _, uid in uids.values()), uids
    platform = {n: uid for n, (service, uid) in uids.items() if service not in ("postgres", "redis")}
    assert set(platform.values()) == {PLATFORM_UID}, platform


def _side_effect_free(dep: Deployment, day: dt.date) -> list:
    return [(f"lookup {m}", fresh("GET", f"{dep.gateway}/v1/models/{m}/predictions/{ENTITY}", headers=auth(dep)))
            for m in online_models()] + [
        (f"predict {m}", fresh("POST", f"{dep.gateway}/v1/models/{m}/predict", headers=auth(dep),
                               json={"records": [record(m, day)]})) for m in online_models()]


def test_a_crashed_serving_container_under_load_fails_no_request(deployed) -> None:
    """The replica's main process (gunicorn's master) SIGKILLed from the host, as a crash would: `docker kill`
    counts as a manual stop, after which Docker's restart policy does not restart the container."""
    dep, driven = deployed
    victim = rollout.names(dep, "serving-churn")[0]
    pid = int(run(["docker", "inspect", "--format", "{{.State.Pid}}", victim]).stdout)
    with load(_side_effect_free(dep, driven["day"])) as report:
        time.sleep(3)
        os.kill(pid, signal.SIGKILL)
        time.sleep(8)
    say(f"kill {victim}: {report.summary()}")
    assert report.ok > 50 and not report.failures, report.summary()
    # the restart policy brings it back; the gateway routes to it again once it is ready
    deadline = time.monotonic() + 120
    while run(["docker", "inspect", "--format", "{{.State.Health.Status}}", victim]).stdout.strip() != "healthy":
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(2)


def test_scaling_a_model_takes_effect_at_the_gateway(deployed) -> None:
    dep, driven = deployed
    before = rollout.names(dep, "serving-churn")
    with load(_side_effect_free(dep, driven["day"])) as report:
        began = time.monotonic()
        three = rollout.scale(dep, "serving-churn", 3)
        TIMINGS["scale serving-churn to 3 (routed)"] = time.monotonic() - began
        added = (set(three) - set(before)).pop()
        ip = rollout.container_ip(added)
        deadline = time.monotonic() + 60
        while f'"upstream":"{ip}:8000"' not in dep.logs("gateway", tail=300):
            assert time.monotonic() < deadline, f"no request reached the new replica {added} ({ip})"
            time.sleep(1)
        rollout.scale(dep, "serving-churn", 2)
    say(f"scale 2 -> 3 -> 2: {report.summary()}")
    assert report.ok > 50 and not report.failures, report.summary()


def test_a_rolling_upgrade_fails_no_request(deployed) -> None:
    dep, driven = deployed
    tag = f"{dep.env['PLATFORM_IMAGE']}-next"
    build_platform(tag, dep.env["PYTHON_BASE_IMAGE"], label=f"upgrade={uuid.uuid4().hex}")
    image_id = run(["docker", "image", "inspect", "--format", "{{.Id}}", tag]).stdout.strip()
    new = {"PLATFORM_IMAGE": tag}
    with load(_side_effect_free(dep, driven["day"])) as report:
        began = time.monotonic()
        for model in online_models():
            rollout.roll_replicas(dep, f"serving-{model}", new)
        # the job replica sets in place: the load here submits no job (and their routes have the sync replicas
        # as backups)
        rollout.recreate(dep, ["mlflow", "worker-churn", "worker-spend", "airflow-apiserver", "airflow-scheduler",
                               "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
                               *(f"serving-{m}-jobs" for m in online_models())], new)
        TIMINGS["rolling upgrade"] = time.monotonic() - began
    say(f"rolling upgrade: {report.summary()}")
    assert report.ok > 100 and not report.failures, report.summary()
    # the gateway last (one container owns the published port: its own replacement is a restart), then all
    # the platform's containers run the new image
    rollout.recreate(dep, ["gateway"], new)
    dep.env["PLATFORM_IMAGE"] = tag
    write_env(dep.env_file, dep.env)  # what the deployment now runs, for the next compose calls
    old = [c["Name"] for c in dep.containers() if c["Service"] not in ("postgres", "redis")
           and run(["docker", "inspect", "--format", "{{.Image}}", c["Name"]]).stdout.strip() != image_id]
    assert not old, old


def test_a_restart_keeps_predictions_registry_and_airflow_history(deployed) -> None:
    dep, driven = deployed
    api = demo.airflow(dep)
    runs_before = {dag: api.dag_run(dag, run_id)["state"] for dag, run_id, _ in driven["runs"]}
    count = psql(dep, "SELECT count(*) FROM predictions.churn")[1]
    began = time.monotonic()
    dep.compose("restart", timeout=600)
    dep.compose("up", "-d", "--wait", "--no-build", "--pull", "never", timeout=900)
    TIMINGS["restart to healthy"] = time.monotonic() - began
    assert psql(dep, "SELECT count(*) FROM predictions.churn")[1] == count
    assert demo.wait_loaded(dep, online_models(), timeout=180) == driven["versions"]  # the registry kept them
    api = demo.airflow(dep)
    assert {dag: api.dag_run(dag, run_id)["state"] for dag, run_id, _ in driven["runs"]} == runs_before
    lookup = requests.get(f"{dep.gateway}/v1/models/churn/predictions/{ENTITY}", headers=auth(dep), timeout=10)
    assert lookup.status_code == 200 and lookup.json()["prediction_date"] == str(driven["day"]), lookup.text
