"""The stack's long-running services (after PostgreSQL): how each one starts and how we know it is healthy.

Order matters: MLflow, then the Airflow api-server (the other Airflow components report their health through
its /api/v2/monitor/health), then the scheduler, dag-processor and triggerer, then per served model its gunicorn
replicas and one async worker, then the gateway (nginx) in front of the replicas.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import urlsafe_b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stack.config import REPO, StackConfig
from stack.procs import PidRecord, spawn

VENV_BIN = Path(sys.executable).parent
# A health probe gets the start time of the process it checks (None: any time) and returns None when healthy,
# else a short reason.
Probe = Callable[[float | None], "str | None"]


@dataclass
class Service:
    name: str
    component: str
    argv: list[str]
    env: dict[str, str]
    health: Probe
    port: int | None = None
    url: str | None = None  # printed in the summary
    timeout: float = 120.0
    settle: float = 0.0  # seconds a port-less process must stay up before it counts as started
    stage: int = 0  # services of one stage start side by side; stages start in order
    upstream: str | None = None  # serving replicas: the address the gateway reaches it at (rolling restarts)
    notes: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # a model's process: its models.yaml entry and command (set by catalogue())

    @property
    def model(self) -> str | None:
        """The model this process serves (SERVING_MODEL), None for the platform's shared services."""
        return self.env.get("SERVING_MODEL")


def launch(cfg: StackConfig, svc: Service) -> tuple[subprocess.Popen, PidRecord]:
    """Start `svc` in the background, its PID file tagged with its model and fingerprint."""
    return spawn(svc.argv, svc.env, cfg.log_file(svc.name), cfg.pid_file(svc.name), REPO, svc.port,
                 model=svc.model, component=svc.component, fingerprint=svc.fingerprint)


def fingerprint(spec: object, svc: Service) -> str:
    """What a model's process was started with: its parsed models.yaml entry, its command and its port.
    A changed entry (or a port moved by a removed model before it) means the process serves something stale.
    The `rollout:` limits are left out: only the rollout watcher reads them, afresh every tick."""
    import dataclasses

    from scoring.spec import ModelSpec, RolloutConfig

    if isinstance(spec, ModelSpec):
        spec = dataclasses.replace(spec, rollout=RolloutConfig())
    text = json.dumps([repr(spec), svc.argv, svc.port])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def http_probe(url: str, check: Callable[[dict, float | None], str | None] | None = None) -> Probe:
    def probe(started_at: float | None = None) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                body = resp.read()
                if not 200 <= resp.status < 300:
                    return f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} from {url}"
        except (urllib.error.URLError, OSError) as exc:
            return f"no answer from {url} ({getattr(exc, 'reason', exc)})"
        if check is None:
            return None
        try:
            return check(json.loads(body), started_at)
        except ValueError:
            return f"{url} did not answer JSON"
    return probe


def airflow_component(key: str) -> Callable[[dict, float | None], str | None]:
    """One component's status in Airflow's health document. After a (re)start its heartbeat must be newer
    than the process, so a heartbeat left by the previous instance does not count."""
    def check(doc: dict, started_at: float | None) -> str | None:
        info = doc.get(key) or {}
        if info.get("status") != "healthy":
            return f"Airflow reports {key} {info.get('status') or 'unknown'}"
        beat = info.get(f"latest_{key}_heartbeat")
        if started_at is not None and beat and dt.datetime.fromisoformat(beat).timestamp() < started_at - 1:
            return f"no {key} heartbeat since it started"
        return None
    return check


def always(started_at: float | None = None) -> str | None:
    return None  # port-less workers: being alive (checked by the caller) is their health


# --- Airflow settings ---------------------------------------------------------------------------------------

def airflow_secrets(cfg: StackConfig) -> dict[str, str]:
    """Per-install random keys, generated once and kept in the (git-ignored) stack home."""
    path = cfg.airflow_home / "stack-secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {
        "jwt_secret": secrets.token_urlsafe(32),
        "api_secret_key": secrets.token_urlsafe(32),
        "fernet_key": urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(values))
    return values


def write_airflow_login(cfg: StackConfig) -> Path:
    """The SimpleAuthManager passwords file with the stack's fixed admin login (Airflow only adds missing users)."""
    path = cfg.airflow_home / "simple_auth_manager_passwords.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({cfg.admin_user: cfg.admin_password}) + "\n")
    return path


def base_env(cfg: StackConfig) -> dict[str, str]:
    """What every service shares: where the databases and MLflow are."""
    env = os.environ.copy()
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "DATABASE_URL": cfg.db_url("serving"),
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "GIT_PYTHON_REFRESH": "quiet",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def airflow_env(cfg: StackConfig) -> dict[str, str]:
    keys = airflow_secrets(cfg)
    env = base_env(cfg)
    env.update({
        "AIRFLOW_HOME": str(cfg.airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.db_url("airflow", "postgresql+psycopg"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{cfg.admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(cfg.airflow_home
                                                                 / "simple_auth_manager_passwords.json"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # every component signs and checks the same task/API tokens
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW__API__BASE_URL": cfg.airflow_url,
        # connections come from the environment, never from DAG code (conn id: serving_db)
        "AIRFLOW_CONN_SERVING_DB": cfg.db_url("serving"),
    })
    if cfg.executor == "celery":
        from stack.celery import celery_env

        env.update(celery_env(cfg))
    return env


# --- the catalogue ------------------------------------------------------------------------------------------

def served_models() -> list[str]:
    """Models with an online endpoint (serving mode online/both), in models.yaml order."""
    from scoring.spec import load_specs

    return [name for name, spec in load_specs().items() if spec.serving.online]


def serving_available() -> bool:
    return (REPO / "serving" / "app.py").exists() and (REPO / "serving" / "gunicorn.conf.py").exists()


def worker_available() -> bool:
    return (REPO / "serving" / "job_worker.py").exists()


def mlflow_service(cfg: StackConfig) -> Service:
    from stack.services import mlflow_server_command

    argv = mlflow_server_command(cfg.db_url(cfg.mlflow_backend_db, "postgresql+psycopg"), cfg.artifacts_dir,
                                 cfg.mlflow_port, cfg.host, cfg.mlflow_workers)
    return Service("mlflow", "mlflow", argv, base_env(cfg), http_probe(f"{cfg.mlflow_url}/health"),
                   port=cfg.mlflow_port, url=cfg.mlflow_url, timeout=180, stage=0)


def airflow_services(cfg: StackConfig) -> list[Service]:
    env = airflow_env(cfg)
    airflow = str(VENV_BIN / "airflow")
    health = f"{cfg.airflow_url}/api/v2/monitor/health"
    api = Service("airflow-api-server", "airflow",
                  [airflow, "api-server", "--host", cfg.host, "--port", str(cfg.airflow_port), "--workers", "1"],
                  env, http_probe(health, airflow_component("metadatabase")), port=cfg.airflow_port,
                  url=cfg.airflow_url, timeout=240, stage=1)
    others = [Service(f"airflow-{cmd}", "airflow", [airflow, cmd], env,
                      http_probe(health, airflow_component(key)), timeout=180, stage=2)
              for cmd, key in (("scheduler", "scheduler"), ("dag-processor", "dag_processor"),
                               ("triggerer", "triggerer"))]
    return [api, *others]


def replica_workers(env: dict[str, str], replicas: int) -> str:
    """gunicorn workers per replica: SERVING_WORKERS when set, else the 2 cores split over the replicas, so a
    model runs as many worker processes (and model copies) as one gunicorn with 2 workers did."""
    return env.get("SERVING_WORKERS") or str(max(1, 2 // replicas))


def serving_services(cfg: StackConfig) -> list[Service]:
    """Per model cfg.replicas sync gunicorns (predict, lookup, OIP, MLflow) and cfg.job_replicas threaded ones
    (the job routes), each its own process group on its own loopback port and, for the gateway, a Unix socket."""
    from stack.gateway import canary_replicas, replicas

    out: list[Service] = []
    models = served_models()
    for rep in replicas(cfg, models) + canary_replicas(cfg, models):
        env = base_env(cfg)
        env.update({"SERVING_MODEL": rep.model, "SERVING_BIND": rep.address})
        if rep.kind == "jobs":  # one process, threads: a submit mostly waits on PostgreSQL
            env.update({"SERVING_WORKERS": "1", "SERVING_THREADS": str(cfg.job_threads)})
        elif rep.kind == "canary":  # one worker: it takes a share of one model's traffic, idle until then
            env.update({"SERVING_WORKERS": "1", "SERVING_MODEL_REF": "canary"})
        else:
            env["SERVING_WORKERS"] = replica_workers(env, cfg.replicas)
        if rep.grpc:  # its gRPC server's port (sync replicas, once the serving app has one)
            env.update({"SERVING_GRPC_PORT": rep.grpc.rsplit(":", 1)[1]})
        argv = [str(VENV_BIN / "gunicorn"), "-c", "serving/gunicorn.conf.py"]
        if rep.socket:  # command-line binds replace the config file's: the TCP port (probes, tests) and the socket
            argv += ["--bind", rep.address, "--bind", f"unix:{rep.socket}"]
        url = f"http://{rep.address}"
        out.append(Service(rep.name, "serving", [*argv, "serving.app:create_app()"], env,
                           http_probe(f"{url}/healthz"), port=rep.port, url=url, timeout=90, stage=3,
                           upstream=rep.upstream))
    return out


def gateway_service(cfg: StackConfig) -> Service:
    import shutil

    from stack.gateway import nginx_argv

    binary = shutil.which("nginx") or "/usr/sbin/nginx"  # `make up` installs it first when missing
    return Service("gateway", "gateway", nginx_argv(cfg, binary), base_env(cfg),
                   http_probe(f"{cfg.gateway_url}/gateway/health"), port=cfg.serving_port, url=cfg.gateway_url,
                   timeout=30, stage=4)


def rollout_service(cfg: StackConfig) -> Service:
    """The rollout watcher (stack/rollout.py): registry shares -> gateway, and the automatic rollback check."""
    return Service("rollout", "gateway", [sys.executable, "-m", "stack.rollout", "watch"],
                   {**base_env(cfg), **cfg.to_env()}, always, timeout=30, settle=3.0, stage=4)


def worker_services(cfg: StackConfig) -> list[Service]:
    out: list[Service] = []
    for model in served_models():
        env = base_env(cfg)
        env["SERVING_MODEL"] = model
        out.append(Service(f"worker-{model}", "worker", [sys.executable, "-m", "serving.job_worker"], env, always,
                           timeout=30, settle=3.0, stage=3))
    return out


def catalogue(cfg: StackConfig) -> tuple[list[Service], list[str]]:
    """The services to run for this config (in start order), and notes about what was left out and why."""
    services: list[Service] = []
    notes: list[str] = []
    if cfg.wants("mlflow"):
        services.append(mlflow_service(cfg))
    celery = cfg.wants("airflow") and cfg.executor == "celery"
    if celery:
        from stack import celery as celery_stack

        services.append(celery_stack.redis_service(cfg))
    if cfg.wants("airflow"):
        services.extend(airflow_services(cfg))
    if celery:
        services.extend(celery_stack.worker_services(cfg))
    if cfg.wants("serving"):
        if serving_available():
            services.extend(serving_services(cfg))
        else:
            notes.append("serving app not started: serving/app.py is not in this checkout yet")
    if cfg.wants("worker"):
        if worker_available():
            services.extend(worker_services(cfg))
        else:
            notes.append("async workers not started: serving/job_worker.py is not in this checkout yet")
    if cfg.wants("gateway") and cfg.wants("serving") and serving_available():
        services.append(gateway_service(cfg))
        if cfg.canary_replicas:
            services.append(rollout_service(cfg))
    model_services = [svc for svc in services if svc.model]
    if model_services:
        from scoring.spec import load_specs

        specs = load_specs()
        for svc in model_services:
            svc.fingerprint = fingerprint(specs.get(svc.model), svc)
    return services, notes
