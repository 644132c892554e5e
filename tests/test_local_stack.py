"""The start/stop machinery of `make up` / `make down` / `make status`, on real processes: a stack of its own
(PostgreSQL, MLflow, the serving app per online model) in a temp folder on free ports. Airflow is left out here
(heavy; it goes through the very same code path), and so are the workers."""

from __future__ import annotations

import dataclasses
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


def _alive_pids(cfg: StackConfig) -> dict[str, int]:
    return {p.stem: r.pid for p in cfg.run_dir.glob("*.pid") if (r := read_pid(p)) and psutil.pid_exists(r.pid)}


def test_up_converges_on_models_yaml(home: Path, light_serving: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed entry's replicas and worker are replaced, a removed entry's are stopped (and listed by status
    until then), the untouched model's processes are left alone."""
    import yaml

    if not serving_available():
        pytest.skip("no serving app in this checkout")
    document = yaml.safe_load((REPO / "models.yaml").read_text())
    assert {"churn", "spend"} <= set(document["models"])
    models_file = home / "models.yaml"
    monkeypatch.setenv("MODELS_FILE", str(models_file))
    models_file.write_text(yaml.safe_dump(document))
    cfg = dataclasses.replace(_config(home, frozenset({"postgres", "serving", "worker"})), replicas=1)
    log: list[str] = []
    try:
        up(cfg, out=log.append)
        first = _alive_pids(cfg)
        spend = {"serving-spend-1", "worker-spend"}
        assert spend | {"serving-churn-1", "worker-churn"} <= set(first), first

        document["models"]["spend"]["serving"]["latency_budget_ms"] = 30  # a changed entry
        models_file.write_text(yaml.safe_dump(document))
        assert any("older models.yaml entry" in row[3] for row in status_rows(cfg) if row[0] in spend)
        log.clear()
        up(cfg, out=log.append)
        second = _alive_pids(cfg)
        assert all(second[name] != first[name] for name in spend), (first, second, log)
        assert all(second[name] == first[name] for name in ("serving-churn-1", "worker-churn", "postgres"))
        assert not any(psutil.pid_exists(first[name]) and psutil.Process(first[name]).status()
                       != psutil.STATUS_ZOMBIE for name in spend), "the old processes are gone"
        assert all(row[3] == "healthy" for row in status_rows(cfg)), status_rows(cfg)

        del document["models"]["spend"]  # a removed entry: still listed, as not declared, until `up`
        models_file.write_text(yaml.safe_dump(document))
        rows = {row[0]: row for row in status_rows(cfg)}
        assert all("not declared" in rows[name][3] and rows[name][1] == str(second[name]) for name in spend), rows
        log.clear()
        up(cfg, out=log.append)
        third = _alive_pids(cfg)
        assert not spend & set(third), third
        assert not any(psutil.pid_exists(second[name]) for name in spend)
        assert all(third[name] == first[name] for name in ("serving-churn-1", "worker-churn"))
        assert any("serving-spend-1: stopped" in line and "no longer served" in line for line in log), log
        assert {row[0] for row in status_rows(cfg)} == {"postgres", "serving-churn-1", "serving-churn-jobs-1",
                                                         "worker-churn"}
    finally:
        down(cfg, out=log.append)
        print("\n".join(log))
