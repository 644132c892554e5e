"""Airflow on Celery workers for the local stack (`STACK_EXECUTOR=celery make up`), as in Airflow's official
compose file: CeleryExecutor, a Redis broker (the machine's redis-server on its own port, data in the stack's
folder), task results in the Airflow metadata database (PostgreSQL), two `airflow celery worker` processes.

Each worker runs one task at a time (concurrency 1, prefetch 1): on 2 cores two workers are two task slots, and
a worker busy with one shard never reserves the next, so a nightly run's shards go to different workers.
A worker's tasks record its Celery hostname as the task instance's `hostname` (both run on one machine here,
where the default, the machine's FQDN, would be the same for both).

The pool POOL caps how many tasks write to PostgreSQL at once (the predict DAGs' score_shard and swap).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from stack.catalogue import Service, airflow_env
from stack.config import StackConfig
from stack.debian import PackageError, ensure_binary

VENV_BIN = Path(sys.executable).parent
WORKERS = 2
POOL = "serving_db_writers"
POOL_SLOTS = 2  # one writer per core; the nightly shards of one model (batch.shards: 2) write side by side
HOSTNAME_ENV = "STACK_CELERY_HOSTNAME"


class CeleryStackError(RuntimeError):
    pass


def worker_hostname() -> str:
    """Airflow's [core] hostname_callable for the local Celery workers: the worker's Celery hostname."""
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


def celery_env(cfg: StackConfig) -> dict[str, str]:
    """What every Airflow component needs to use the Celery executor (added to airflow_env)."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": cfg.redis_url,
        # results (task states) in PostgreSQL, Airflow's own database, as the official compose file does
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + cfg.db_url("airflow", "postgresql"),
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
    }


def ensure_redis() -> str:
    """redis-server; installs the Debian package with apt-get when it is missing."""
    try:
        return ensure_binary("redis-server", "redis-server")
    except PackageError as exc:
        raise CeleryStackError(str(exc)) from exc


def redis_probe(cfg: StackConfig):  # noqa: ANN201 - a catalogue Probe
    def probe(started_at: float | None = None) -> str | None:
        import redis

        try:
            redis.Redis(host=cfg.host, port=cfg.redis_port, socket_timeout=2).ping()
        except redis.RedisError as exc:
            return f"redis at {cfg.host}:{cfg.redis_port} does not answer PING ({exc})"
        return None
    return probe


def worker_probe(cfg: StackConfig, name: str):  # noqa: ANN201 - a catalogue Probe
    def probe(started_at: float | None = None) -> str | None:
        from celery import Celery

        app = Celery(broker=cfg.redis_url)
        try:
            replies = app.control.ping(destination=[name], timeout=1.0)
        except Exception as exc:  # noqa: BLE001 - any broker error is "not healthy yet"
            return f"broker unreachable ({exc})"
        finally:
            app.close()
        return None if replies else f"Celery worker {name} does not answer a ping"
    return probe


def redis_service(cfg: StackConfig) -> Service:
    folder = cfg.home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"  # `make up` installs it first when missing
    # Loopback only, no snapshots: the broker holds task messages in flight, Airflow's database the truth
    # (a lost message is a task the scheduler re-queues after its timeout). appendonly keeps them over a restart.
    argv = [binary, "--port", str(cfg.redis_port), "--bind", cfg.host, "--dir", str(folder), "--save", "",
            "--appendonly", "yes", "--protected-mode", "yes", "--daemonize", "no"]
    return Service("redis", "redis", argv, dict(os.environ), redis_probe(cfg), port=cfg.redis_port,
                   url=cfg.redis_url, timeout=30, stage=0)


def worker_services(cfg: StackConfig) -> list[Service]:
    env = {**airflow_env(cfg), **celery_env(cfg),
           "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stack.celery.worker_hostname"}
    host = socket.gethostname()
    out = []
    for i in range(1, WORKERS + 1):
        name = f"celery-{i}@{host}"
        argv = [str(VENV_BIN / "airflow"), "celery", "worker", "--celery-hostname", name, "--concurrency", "1",
                # both workers share this machine's disk, where the api-server reads task logs itself
                "--skip-serve-logs"]
        out.append(Service(f"airflow-celery-worker-{i}", "airflow", argv, {**env, HOSTNAME_ENV: name},
                           worker_probe(cfg, name), timeout=120, stage=2))
    return out


def airflow_cli(cfg: StackConfig, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = airflow_env(cfg)
    if cfg.executor == "celery":
        env.update(celery_env(cfg))
    return subprocess.run([str(VENV_BIN / "airflow"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ensure_pool(cfg: StackConfig) -> None:
    """The pool the predict DAGs' writers use (idempotent: `pools set` creates or updates it)."""
    result = airflow_cli(cfg, "pools", "set", POOL, str(POOL_SLOTS),
                         "Tasks writing prediction tables to PostgreSQL (score_shard, swap)")
    if result.returncode != 0:
        raise CeleryStackError(f"airflow pools set {POOL} failed: {(result.stdout + result.stderr)[-800:]}")
