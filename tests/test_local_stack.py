"""The start/stop machinery of `make up` / `make down` / `make status`, on real processes: a stack of its own
(PostgreSQL, MLflow, the serving app per online model) in a temp folder on free ports. Airflow is left out here
(heavy; it goes through the very same code path), and so are the workers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from stack.catalogue import Service, http_probe, serving_available
from stack.config import REPO, StackConfig
from stack.pg import free_port, port_in_use
from stack.procs import read_pid
from stack.up import StackError, down, status_rows, up
from testing.ports import free_run

pytestmark = pytest.mark.integration


@pytest.fixture()
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stack-test-"))
    path.chmod(0o755)  # the postgres user must reach pgdata inside it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(home: Path, components: frozenset[str]) -> StackConfig:
    base = free_run(12)  # the gateway's ports (REST, gRPC), then the replicas' (2 sync + 1 jobs per model)
    return StackConfig(home=home, pg_port=free_port(), mlflow_port=free_port(), serving_port=base,
                       grpc_port=base + 1, replica_port=base + 4, components=components)


def _cli_env(cfg: StackConfig, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"STACK_HOME": str(cfg.home), "STACK_PG_PORT": str(cfg.pg_port),
                "STACK_MLFLOW_PORT": str(cfg.mlflow_port), "STACK_SERVING_PORT": str(cfg.serving_port),
                "STACK_REPLICA_PORT": str(cfg.replica_port),
                "STACK_GRPC_PORT": str(cfg.grpc_port),
                "STACK_COMPONENTS": ",".join(sorted(cfg.components)), **extra})
    return env


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status


@pytest.fixture()
def light_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_WORKERS", "1")  # one gunicorn worker per deployment keeps the test quick


def test_up_twice_then_down_stops_every_process(home: Path, light_serving: None) -> None:
    components = frozenset({"postgres", "mlflow", "serving"} if serving_available() else {"postgres", "mlflow"})
    cfg = _config(home, components)
    log: list[str] = []
    try:
        services = up(cfg, out=log.append)
        names = {s.name for s in services}
        assert "mlflow" in names
        # every service answers its health endpoint; the serving DB is migrated
        assert _get(f"{cfg.mlflow_url}/health") == 200
        serving = [s for s in services if s.component == "serving"]
        for svc in serving:
            assert _get(f"{svc.url}/healthz") == 200
        with psycopg.connect(cfg.db_url("serving")) as conn:
            assert conn.execute("SELECT count(*) FROM ops.schema_migrations").fetchone()[0] >= 1
        assert all(row[3] == "healthy" for row in status_rows(cfg)), status_rows(cfg)

        records = {p.stem: read_pid(p) for p in cfg.run_dir.glob("*.pid")}
        assert set(records) == {"postgres"} | names
        family = set()
        for record in records.values():
            proc = psutil.Process(record.pid)
            family |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}

        # a second `up` finds everything running and healthy, and starts nothing
        log.clear()
        up(cfg, out=log.append)
        assert {p.stem: read_pid(p) for p in cfg.run_dir.glob("*.pid")} == records
        assert all("already running" in line for line in log if line.split(":")[0] in records), log
    finally:
        stopped = down(cfg, out=log.append)
        print("\n".join(log))

    assert set(stopped) == set(records)
    assert not list(cfg.run_dir.glob("*.pid"))
    still = [pid for pid in family if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert still == [], f"processes left after down: {still}"
    assert not port_in_use(cfg.pg_port) and not port_in_use(cfg.mlflow_port)
    assert (cfg.pgdata / "PG_VERSION").exists(), "down keeps the data"


def test_a_taken_port_fails_naming_the_service_and_starts_nothing(home: Path) -> None:
    cfg = _config(home, frozenset({"postgres", "mlflow"}))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.mlflow_port))
        squatter.listen()
        result = subprocess.run([sys.executable, "-m", "stack.up", "up"], cwd=REPO, env=_cli_env(cfg),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"mlflow: port {cfg.mlflow_port} is already taken" in result.stderr
    assert "STACK_MLFLOW_PORT" in result.stderr  # and how to get out of it
    assert not list(cfg.run_dir.glob("*.pid"))
    assert not port_in_use(cfg.pg_port), "nothing was started: not even PostgreSQL"


def test_a_service_that_dies_at_start_stops_what_this_run_started(home: Path) -> None:
    cfg = _config(home, frozenset({"postgres"}))
    port = free_port()
    # the injected fault: a service that exits at once with a reason in its log
    broken = Service("broken-app", "serving", [sys.executable, "-c", "import sys; print('boom: no such setting'); "
                                               "sys.exit(3)"], dict(os.environ), http_probe(f"http://127.0.0.1:{port}/"),
                     port=port, timeout=30)
    with pytest.raises(StackError, match=r"^broken-app: failed to start: process exited with code 3") as failure:
        up(cfg, out=lambda _: None, services=[broken])
    assert "boom: no such setting" in str(failure.value)  # the log tail says why
    assert not list(cfg.run_dir.glob("*.pid"))
    assert not port_in_use(cfg.pg_port), "PostgreSQL, started by this run, was stopped again"


def test_missing_postgres_binaries_are_named(home: Path) -> None:
    cfg = _config(home, frozenset({"postgres"}))
    result = subprocess.run([sys.executable, "-m", "stack.up", "up"], cwd=REPO,
                            env=_cli_env(cfg, PG_BINDIR="/nonexistent/bin"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "postgres: /nonexistent/bin/initdb not found" in result.stderr
    assert not list(cfg.run_dir.glob("*.pid"))
