"""The container deployment's structure (no Docker engine here): docker-compose.yaml, Dockerfile, .env.example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from scoring.spec import load_specs

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = ["airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
           "airflow-worker"]
# engines used as published, not built here: the official image by default, its name overridable from .env
UPSTREAM_IMAGES = {"postgres": ("POSTGRES_IMAGE", "postgres:15"), "redis": ("REDIS_IMAGE", "redis:7.2-bookworm")}
# jobs that run to completion: no healthcheck, restart "no"
ONE_SHOT = {"db-init", "airflow-init", "mlflow-init", "demo-seed"}
# `$${X}` is compose's escape (expanded by the container's shell), not a compose variable
VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
SECRET_WORD = re.compile(r"password|secret|token|fernet|key", re.IGNORECASE)


@pytest.fixture(scope="module")
def raw() -> str:
    return (REPO / "docker-compose.yaml").read_text()


@pytest.fixture(scope="module")
def compose(raw: str) -> dict[str, Any]:
    return yaml.safe_load(raw)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def online_models() -> list[str]:
    return [name for name, spec in load_specs().items() if spec.serving.online]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (merged from anchors)"
    return {k: str(v) for k, v in env.items()}


def test_every_platform_service_is_present(services: dict[str, dict[str, Any]]) -> None:
    expected = {"postgres", "redis", "db-init", "mlflow", "gateway", *AIRFLOW}
    expected |= {f"serving-{m}" for m in online_models()} | {f"worker-{m}" for m in online_models()}
    assert expected <= set(services), f"missing: {sorted(expected - set(services))}"
    assert {"serving-churn", "serving-spend", "worker-churn", "worker-spend"} <= set(services)


def test_images_come_from_the_project_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name, (var, image) in UPSTREAM_IMAGES.items():
        assert services[name]["image"] == f"${{{var}:-{image}}}", name
    for name, svc in services.items():
        if name in UPSTREAM_IMAGES:
            continue
        assert svc["build"]["context"] == "." and svc["build"]["dockerfile"] == "Dockerfile", name
        assert svc["image"].startswith("${PLATFORM_IMAGE"), name
        # no shared env_file: each service's environment names what it uses (test_each_service_gets_only_its_secrets)
        assert not svc.get("env_file"), f"{name}: env_file {svc.get('env_file')!r} would hand it every secret"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_BASE_IMAGE=python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM \$\{PYTHON_BASE_IMAGE\}$", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install .*-r requirements\.txt$", dockerfile, re.MULTILINE)
    args = services["db-init"]["build"]["args"]  # the official base and PyPI unless .env names others
    assert args == {"PYTHON_BASE_IMAGE": "${PYTHON_BASE_IMAGE:-python:3.11-slim}",
                    "PIP_INDEX_URL": "${PIP_INDEX_URL:-https://pypi.org/simple}",
                    "PIP_FIND_LINKS": "${PIP_FIND_LINKS:-}", "PIP_TRUSTED_HOST": "${PIP_TRUSTED_HOST:-}"}
    assert re.search(r"^USER ", dockerfile, re.MULTILINE), "the image does not run as root"
    assert "nginx-light" in dockerfile, "the gateway runs nginx from the same image"


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} is a one-shot job"
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    assert "/api/v2/monitor/health" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "celery-ping" in " ".join(services["airflow-worker"]["healthcheck"]["test"])
    for name, svc in services.items():  # a timed-out check is killed itself, not just its shell
        check = svc.get("healthcheck", {}).get("test", [])
        if check and check[0] == "CMD-SHELL" and "airflow" in check[1] + name:
            assert check[1].startswith("exec "), name
    assert "/gateway/health" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    for model in online_models():
        assert "/healthz" in " ".join(services[f"serving-{model}"]["healthcheck"]["test"])


def test_start_order_uses_health_and_completion_conditions(services: dict[str, dict[str, Any]]) -> None:
    def needs(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must name conditions"
        return {dep: spec["condition"] for dep, spec in deps.items()}

    assert needs("db-init") == {"postgres": "service_healthy"}
    assert needs("mlflow")["postgres"] == "service_healthy"
    assert needs("airflow-init")["postgres"] == "service_healthy"
    for name in AIRFLOW[1:]:
        deps = needs(name)
        assert deps["postgres"] == "service_healthy", name
        assert deps["redis"] == "service_healthy", name
        assert deps["airflow-init"] == "service_completed_successfully", name
        assert deps["db-init"] == "service_completed_successfully", name
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        # started beside the api-server: they need only the migrated database
        assert "airflow-apiserver" not in needs(name), name
    # a task's runtime talks to the execution API: a worker that starts first fails the tasks it takes
    # (the compose test saw check_window fail with "Name or service not known" for airflow-apiserver)
    assert needs("airflow-worker")["airflow-apiserver"] == "service_healthy"
    for model in online_models():
        for name in (f"serving-{model}", f"worker-{model}"):
            deps = needs(name)
            assert deps["db-init"] == "service_completed_successfully", name
            assert deps["mlflow"] == "service_healthy", name
    gateway = needs("gateway")
    assert all(gateway[f"serving-{m}"] == "service_healthy" for m in online_models()), gateway
    for name, svc in services.items():  # every dependency exists
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_airflow_follows_the_official_layout(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert "x-airflow-common" in compose
    commands = {name: " ".join(services[name].get("command") or []) for name in AIRFLOW[1:]}
    assert commands["airflow-apiserver"].startswith("airflow api-server")
    assert commands["airflow-scheduler"] == "airflow scheduler"
    assert commands["airflow-dag-processor"] == "airflow dag-processor"
    assert commands["airflow-triggerer"] == "airflow triggerer"
    assert commands["airflow-worker"] == "airflow celery worker"
    assert services["airflow-worker"]["deploy"]["replicas"] >= 2, "the nightly shards spread over workers"
    assert "airflow db migrate" in services["airflow-init"]["command"][-1]
    assert "airflow pools set serving_db_writers" in services["airflow-init"]["command"][-1]
    for name in AIRFLOW:
        env = _env(services[name])
        # Celery on Redis as in Airflow's official file (locally `make up` keeps LocalExecutor by default)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"] == \
            "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@redis:6379/0"  # a password on the network
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("@postgres:5432/airflow")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
        assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "false"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW_CONN_SERVING_DB"].endswith("@postgres:5432/serving")
        assert VAR.fullmatch(env["AIRFLOW__API_AUTH__JWT_SECRET"]), "one JWT secret, shared, from .env"


def test_one_serving_deployment_and_worker_per_model(services: dict[str, dict[str, Any]]) -> None:
    from stack.gateway import COMPOSE_GRPC_PORT, compose_config

    gateway = compose_config(online_models(), Path("/tmp/gateway"))
    # what stack/compose/resolver.py renders once Docker's DNS answered: the replicas' own addresses
    resolved = compose_config(online_models(), Path("/tmp/gateway"),
                              {"serving-churn": ["10.0.0.2", "10.0.0.3"], "airflow-apiserver": ["10.0.0.9"]})
    assert "server 10.0.0.2:8000" in resolved and "server 10.0.0.3:8000" in resolved
    assert "server serving-churn:8000" not in resolved and "server airflow-apiserver" not in resolved
    assert services["gateway"]["command"] == ["python", "-m", "stack.compose.resolver"]
    routes = set()
    for model in online_models():
        app = services[f"serving-{model}"]
        assert app["command"] == ["gunicorn", "-c", "serving/gunicorn.conf.py", "serving.app:create_app()"]
        assert _env(app)["SERVING_MODEL"] == model
        assert app["deploy"]["replicas"] >= 2, f"{model}: replicas behind the gateway"
        assert "ports" not in app, f"{model}: reached through the gateway only"
        # each deployment is reachable on its own: its routes go to its own service (all its replicas)
        assert f"server serving-{model}:8000" in gateway and f"location ^~ /v1/models/{model}/ {{" in gateway
        # its job routes go to a threaded deployment of its own
        jobs = services[f"serving-{model}-jobs"]
        assert _env(jobs)["SERVING_MODEL"] == model and int(_env(jobs)["SERVING_THREADS"]) > 1
        assert f"upstream jobs_{model} {{\n        server serving-{model}-jobs:8000" in gateway
        # gRPC: the gateway's :8001 to the replicas' gRPC servers, on the port the gateway's config expects
        assert int(_env(app)["SERVING_GRPC_PORT"]) == COMPOSE_GRPC_PORT
        assert f"upstream grpc_{model} {{\n        server serving-{model}:{COMPOSE_GRPC_PORT}" in gateway
        routes.add(f"/models/{model}/")
        worker = services[f"worker-{model}"]
        assert worker["command"] == ["python", "-m", "serving.job_worker"]
        assert _env(worker)["SERVING_MODEL"] == model
        assert _env(worker)["DATABASE_URL"].endswith("@postgres:5432/serving")
    assert len(routes) == len(online_models()), "each deployment has its own route at the gateway"


def published(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    return {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}


def holds_data_or_secrets(name: str, svc: dict[str, Any]) -> list[str]:
    """Why a service must not be published: volumes (data) or secret values in its environment or env file."""
    reasons = [f"{name}: volume {v}" for v in svc.get("volumes") or []]
    if svc.get("env_file"):
        reasons.append(f"{name}: env_file {svc['env_file']} (the .env holds the secrets)")
    reasons += [f"{name}: {k}" for k, v in _env(svc).items() if SECRET_WORD.search(k) or "@" in v]
    return reasons


def test_only_the_gateway_is_published(services: dict[str, dict[str, Any]]) -> None:
    ports = published(services)
    assert set(ports) == {"gateway"}, ports
    assert holds_data_or_secrets("gateway", services["gateway"]) == []
    assert ports["gateway"] == ["${GATEWAY_PORT:-8000}:8000", "${AIRFLOW_PORT:-8080}:8080",
                                "${GATEWAY_GRPC_PORT:-8001}:8001"]
    # the check catches a planted mistake: MLflow (data, secrets from .env) published again
    planted = {**services, "mlflow": {**services["mlflow"], "ports": ["5000:5000"]}}
    assert set(published(planted)) == {"gateway", "mlflow"}
    assert holds_data_or_secrets("mlflow", planted["mlflow"])


def test_postgres_keeps_data_in_a_named_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    mounts = services["postgres"]["volumes"]
    assert any(m.startswith("postgres-data:") for m in mounts)
    assert "postgres-data" in compose["volumes"]
    init_sql = next(m.split(":")[0] for m in mounts if "docker-entrypoint-initdb.d" in m)
    body = (REPO / init_sql).read_text()
    assert "CREATE DATABASE mlflow" in body and "CREATE DATABASE airflow" in body


def hard_coded_secrets(services: dict[str, dict[str, Any]]) -> list[str]:
    """Values that carry a password, secret, token or key without being a ${VAR} reference, and passwords
    inside URLs that are not ${VAR} references."""
    offenders = []
    for name, svc in services.items():
        values = dict(_env(svc))
        command = svc.get("command")
        if isinstance(command, list):
            values.update({f"command[{i}]": str(c) for i, c in enumerate(command)})
        for key, value in values.items():
            literal = value and not VAR.fullmatch(value) and not value.startswith("/")
            if SECRET_WORD.search(key) and literal and not key.endswith(("_USERS", "_FILE")):
                offenders.append(f"{name}.{key}={value}")
            for url_password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                if not VAR.fullmatch(url_password):
                    offenders.append(f"{name}.{key}: password in URL is {url_password!r}")
    return offenders


def test_no_hard_coded_secrets(services: dict[str, dict[str, Any]]) -> None:
    assert hard_coded_secrets(services) == []


def test_the_secret_check_catches_a_planted_secret(services: dict[str, dict[str, Any]]) -> None:
    planted = {"mlflow": {**services["mlflow"], "environment": {"API_TOKEN": "abc123"}},
               "db-init": {**services["db-init"], "command": ["x", "postgresql://u:hunter2@db/serving"]}}
    found = hard_coded_secrets(planted)
    assert any("API_TOKEN" in f for f in found) and any("hunter2" in f for f in found), found


def test_env_example_lists_every_variable_and_holds_no_secret(raw: str) -> None:
    used = set(VAR.findall(raw))
    example_text = (REPO / ".env.example").read_text()
    example = dict(line.split("=", 1) for line in example_text.splitlines() if line and not line.startswith("#"))
    assert used <= set(example), f"not in .env.example: {sorted(used - set(example))}"
    for key, value in example.items():
        if SECRET_WORD.search(key):
            assert value == "", f".env.example must not ship a value for {key}"
    assert ".env" in (REPO / ".gitignore").read_text().split()
    assert ".env" in (REPO / ".dockerignore").read_text().split(), "the image never contains the .env file"


# ------------------------------------------------------------------------------------- least privilege (issue 13)

def _secret_vars() -> frozenset[str]:
    from scoring.settings import REGISTRY

    return frozenset(name for name, var in REGISTRY.items() if var.secret)


_AIRFLOW_SECRETS = {"POSTGRES_BATCH_PASSWORD", "POSTGRES_AIRFLOW_PASSWORD", "MLFLOW_AIRFLOW_PASSWORD",
                    "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "REDIS_PASSWORD"}
_POSTGRES_ROLES = {f"POSTGRES_{who}_PASSWORD" for who in ("BATCH", "SERVING", "WORKER", "AIRFLOW", "MLFLOW",
                                                           "FEATURES")}
# What each service may hold (the secrets it uses, nothing more); a service not listed holds none.
SECRETS_OF: dict[str, set[str]] = {
    "postgres": {"POSTGRES_PASSWORD"},
    "redis": {"REDIS_PASSWORD"},  # its only client is Airflow's Celery
    "demo-seed": {"POSTGRES_FEATURES_PASSWORD"},  # writes features, nothing else
    "db-init": {"POSTGRES_PASSWORD"} | _POSTGRES_ROLES,
    "mlflow": {"POSTGRES_MLFLOW_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET_KEY"},
    "mlflow-init": {"MLFLOW_ADMIN_PASSWORD", "MLFLOW_AIRFLOW_PASSWORD", "MLFLOW_SERVING_PASSWORD",
                    "MLFLOW_WORKER_PASSWORD"},
    "airflow-init": _AIRFLOW_SECRETS | {"AIRFLOW_ADMIN_PASSWORD"},
    **{name: _AIRFLOW_SECRETS for name in AIRFLOW[1:]},
}


def secrets_held(svc: dict[str, Any]) -> set[str]:
    return {var for value in _env(svc).values() for var in VAR.findall(value)} & _secret_vars()


def test_each_service_gets_only_its_secrets(services: dict[str, dict[str, Any]]) -> None:
    expected = dict(SECRETS_OF)
    for model in online_models():
        expected[f"serving-{model}"] = {"POSTGRES_SERVING_PASSWORD", "MLFLOW_SERVING_PASSWORD", "SERVING_TOKENS"}
        expected[f"serving-{model}-jobs"] = expected[f"serving-{model}"]  # the same app, for the job routes
        expected[f"worker-{model}"] = {"POSTGRES_WORKER_PASSWORD", "MLFLOW_WORKER_PASSWORD"}
    held = {name: secrets_held(svc) for name, svc in services.items()}
    assert {n: h for n, h in held.items() if h} == {n: e for n, e in expected.items() if e}
    assert held.get("gateway", set()) == set()
    # the check catches a planted mistake: the admin password handed to a serving replica
    planted = {**services["serving-churn"], "environment": {**_env(services["serving-churn"]),
                                                            "X": "${POSTGRES_PASSWORD:?x}"}}
    assert "POSTGRES_PASSWORD" in secrets_held(planted)


def test_every_secret_is_required(raw: str) -> None:
    """A secret referenced with a default (`${X:-}`) or none (`${X}`) lets a service start open or empty."""
    for match in re.finditer(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", raw):
        if match[1] in _secret_vars():
            assert match[2].startswith(":?"), f"${{{match[1]}{match[2]}}} must be required (:?)"
    assert "${SERVING_TOKENS:?" in raw and "${AIRFLOW_ADMIN_PASSWORD:?" in raw


def test_no_secret_on_a_command_line(services: dict[str, dict[str, Any]]) -> None:
    """Commands, entrypoints and healthchecks are visible in `ps` and `docker inspect`: no secret is interpolated
    into them; a shell script may name one only for a builtin (printf), expanded inside the container."""
    secrets = _secret_vars()
    for name, svc in services.items():
        parts = []
        for key in ("command", "entrypoint"):
            value = svc.get(key) or []
            parts += [value] if isinstance(value, str) else [str(v) for v in value]
        parts += [str(v) for v in (svc.get("healthcheck") or {}).get("test", [])]
        for part in parts:
            assert not set(VAR.findall(part)) & secrets, f"{name}: secret interpolated into {part!r}"
            for line in part.splitlines():
                if any(f"$${{{s}}}" in line for s in secrets):
                    assert line.strip().startswith("printf "), f"{name}: secret in an external command: {line!r}"
            assert "://" not in part or "@" not in part, f"{name}: credentials in a URL on the command line"
    assert "--backend-store-uri" not in services["mlflow"]["command"]


def test_each_component_logs_in_as_its_own_role_and_user(services: dict[str, dict[str, Any]]) -> None:
    def login(url: str) -> str:
        return re.match(r"^[a-z+]+://([^:@/]+)", url)[1]

    for model in online_models():
        serving, worker = _env(services[f"serving-{model}"]), _env(services[f"worker-{model}"])
        assert login(serving["DATABASE_URL"]) == "platform_serving"
        assert login(worker["DATABASE_URL"]) == "platform_worker"
        assert (serving["MLFLOW_TRACKING_USERNAME"], worker["MLFLOW_TRACKING_USERNAME"]) == ("serving", "worker")
    for name in AIRFLOW:
        env = _env(services[name])
        assert login(env["DATABASE_URL"]) == login(env["AIRFLOW_CONN_SERVING_DB"]) == "platform_batch", name
        assert login(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]) == "platform_airflow", name
        if "AIRFLOW__CELERY__RESULT_BACKEND" in env:  # CeleryExecutor: its results in Airflow's database
            assert login(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+")) == "platform_airflow", name
        assert env["MLFLOW_TRACKING_USERNAME"] == "airflow", name
    mlflow = services["mlflow"]
    assert login(_env(mlflow)["MLFLOW_BACKEND_STORE_URI"]) == "platform_mlflow"
    assert mlflow["command"][mlflow["command"].index("--app-name") + 1] == "basic-auth"
    assert _env(mlflow)["MLFLOW_AUTH_CONFIG_PATH"] == "/opt/platform/mlflow/basic_auth.ini"
    assert (REPO / "mlflow" / "basic_auth.ini").exists() and "ports" not in mlflow
    assert services["mlflow-init"]["command"] == ["python", "-m", "stack.mlflow_auth"]
    for model in online_models():  # serving starts only once its MLflow user exists
        assert services[f"serving-{model}"]["depends_on"]["mlflow-init"]["condition"] == \
            "service_completed_successfully"


def test_the_gateway_follows_dns_and_admits_a_replica_once_ready() -> None:
    """stack/compose/resolver.py: what the gateway routes to as Docker's DNS answers change."""
    from stack.compose.resolver import next_addresses

    ready = {"10.0.0.2", "10.0.0.3"}
    first = next_addresses({}, {"serving-churn": ["10.0.0.2", "10.0.0.3"], "airflow-apiserver": ["10.0.0.9"]},
                           ready.__contains__)
    assert first == {"serving-churn": ["10.0.0.2", "10.0.0.3"], "airflow-apiserver": ["10.0.0.9"]}
    # scaled to 3: the new replica joins only once it answers /readyz
    scaled = {"serving-churn": ["10.0.0.2", "10.0.0.3", "10.0.0.4"], "airflow-apiserver": ["10.0.0.9"]}
    assert next_addresses(first, scaled, ready.__contains__)["serving-churn"] == ["10.0.0.2", "10.0.0.3"]
    ready.add("10.0.0.4")
    assert next_addresses(first, scaled, ready.__contains__)["serving-churn"] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    # a replica restarted in place (same address) leaves while it loads its model, and comes back once ready
    ready.discard("10.0.0.3")
    assert next_addresses(first, first, ready.__contains__)["serving-churn"] == ["10.0.0.2"]
    ready.add("10.0.0.3")
    # a replica gone from DNS leaves at once; no answer at all keeps the last known addresses
    assert next_addresses(first, {"serving-churn": ["10.0.0.3"]}, ready.__contains__) == {"serving-churn": ["10.0.0.3"]}
    assert next_addresses(first, {"serving-churn": []}, ready.__contains__) == \
        {"serving-churn": ["10.0.0.2", "10.0.0.3"]}
    # a fresh start where nothing is ready yet (no champion): every replica, rather than none
    assert next_addresses({}, {"serving-churn": ["10.0.0.7"]}, lambda ip: False) == {"serving-churn": ["10.0.0.7"]}
