"""The throwaway platform the test suite and the benches run against (not shipped: `testing` is no package in
pyproject). Each piece is a start/stop object under one temporary directory and hands back URLs:

    with Platform("bench-x-") as p:
        db = p.database()                  # PostgreSQL (serving, mlflow, airflow databases), migrations applied
        uri = p.mlflow()                   # a real MLflow tracking server + registry on that PostgreSQL
        end = p.features(day, 30, 2_000)   # demo feature snapshots
        train_champion(spec, db, end + dt.timedelta(days=1))  # trained, gate-promoted, aliased champion
        p.gunicorn("churn", port)          # one model's gunicorn (testing.servers), stopped on close
        p.worker("churn", "w0")            # an async queue worker (log <root>/w0.log), killed on close

Nothing starts before it is first needed: the PostgreSQL port is reserved when the Platform is made, so its URLs
(DATABASE_URL, Airflow's connection) can go into the environment before anything imports Airflow, while the
cluster itself starts only for the first test or bench step that uses it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stack.pg import PgCluster, free_port
from stack.services import start_mlflow, stop_process
from testing.servers import AsyncWorker, start_gunicorn

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DATABASES = ("serving", "mlflow", "airflow")


def _reserve_port() -> socket.socket:
    """A socket bound to a free loopback port and kept open: no other free-port lookup (ours or a parallel
    session's) is handed the same port until the socket is closed just before the server binds it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class Postgres:
    """A PostgreSQL cluster of its own (stack/pg.py: initdb/pg_ctl, as the postgres user when root) on a port
    reserved up front, started on first need with `databases` created."""

    def __init__(self, root: Path, databases: Sequence[str] = DATABASES, durable: bool = False) -> None:
        self._reservation: socket.socket | None = _reserve_port()
        # throwaway: fsync & co. off for speed unless asked (make up's cluster keeps them on)
        self.cluster = PgCluster(root / "pgdata", self._reservation.getsockname()[1], durable=durable)
        self.databases = tuple(databases)
        self.started = False
        self._migrated: set[str] = set()

    @property
    def port(self) -> int:
        return self.cluster.port

    def url(self, dbname: str = "serving", driver: str = "postgresql") -> str:
        return self.cluster.url(dbname, driver)

    def start(self) -> Postgres:
        if self.started:
            return self
        self.cluster.init()
        self._release()
        self.cluster.start()
        for name in self.databases:
            self.cluster.create_database(name)
        self.started = True
        return self

    def migrated(self, dbname: str = "serving") -> str:
        """The database's URL with every migration from sql/ applied (once per session)."""
        self.start()
        url = self.url(dbname)
        if dbname not in self._migrated:
            from scoring.migrate import apply_migrations

            apply_migrations(url)
            self._migrated.add(dbname)
        return url

    def destroy(self) -> None:
        self._release()
        if self.cluster.initialized():
            self.cluster.destroy()
        self.started = False

    def _release(self) -> None:
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class MlflowServer:
    """A real `mlflow server` (tracking + registry) with `backend_uri` as its store and artifacts under `root`."""

    def __init__(self, backend_uri: str, root: Path) -> None:
        self.backend_uri = backend_uri
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.uri = ""

    def start(self) -> str:
        if self.proc is None:
            port = free_port()
            self.proc = start_mlflow(self.backend_uri, self.root / "mlartifacts", port, self.root / "mlflow.log")
            self.uri = f"http://127.0.0.1:{port}"
        return self.uri

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def airflow_environment(home: Path, postgres: Postgres, repo: Path = REPO) -> dict[str, str]:
    """Airflow's settings for an in-process `dag.test()` against `postgres` (its airflow database), DAGs and
    plugins from this checkout; `serving_db` points at the serving database."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url("airflow", "postgresql+psycopg"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW_CONN_SERVING_DB": postgres.url("serving"),
    }


def migrate_airflow_db() -> None:
    """`airflow db migrate` with this process's environment (set airflow_environment() first)."""
    out = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], capture_output=True, text=True,
                         env=os.environ.copy(), check=False)
    if out.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")


def seed_features(url: str, end: dt.date, days: int, customers: int) -> dt.date:
    """`days` daily demo feature snapshots ending at `end` (inclusive); returns `end`."""
    from scoring.demo_data import seed_history

    seed_history(end, days, customers, url=url)
    return end


def train_champion(spec: Any, url: str, end: dt.date, force: bool = False) -> Any:
    """Train and register `spec`'s model on the window ending before `end`, through the promotion gate.
    With `force`, a version the gate refused (e.g. its latency check on a busy machine) is aliased champion
    anyway: a bench needs a model either way. Returns training's result (version, decision)."""
    from scoring.db import connect
    from scoring.training import train_and_register

    with connect(url) as conn:
        result = train_and_register(spec, conn, end)
    if force and not result.decision.promoted:
        from scoring.registry import client

        mc = client()
        # serving loads only gate-approved versions: the bench's forced version says it was forced, and approved
        mc.set_model_version_tag(spec.name, result.version, "gate.forced", "testing.platform train_champion(force)")
        mc.set_model_version_tag(spec.name, result.version, "gate.decision", "promoted")
        mc.set_registered_model_alias(spec.name, "champion", result.version)
    return result


class Platform:
    """The pieces above under one temporary directory; each starts on first need, close() stops them all.
    database() and mlflow() also point this process's DATABASE_URL / MLFLOW_TRACKING_URI at what they start."""

    def __init__(self, prefix: str = "platform-", databases: Sequence[str] = DATABASES,
                 durable_postgres: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        os.chmod(self.root, 0o755)  # the PostgreSQL server runs as the postgres user when we are root
        self.postgres = Postgres(self.root, databases, durable_postgres)
        self._mlflow: MlflowServer | None = None
        self._procs: list[subprocess.Popen] = []
        self._workers: list[AsyncWorker] = []

    def database(self, dbname: str = "serving") -> str:
        url = self.postgres.migrated(dbname)
        os.environ["DATABASE_URL"] = url
        return url

    def mlflow(self) -> str:
        if self._mlflow is None:
            self.postgres.start()
            self._mlflow = MlflowServer(self.postgres.url("mlflow", "postgresql+psycopg"), self.root)
        uri = self._mlflow.start()
        os.environ["MLFLOW_TRACKING_URI"] = uri
        return uri

    def stop_mlflow(self) -> None:
        if self._mlflow is not None:
            self._mlflow.stop()

    def features(self, end: dt.date, days: int, customers: int) -> dt.date:
        return seed_features(self.database(), end, days, customers)

    def gunicorn(self, model: str, port: int, app: str = "serving.app:create_app()",
                 env: Mapping[str, str] | None = None, log_path: Path | None = None) -> subprocess.Popen:
        """One model's gunicorn on 127.0.0.1:port (returns once /healthz answers); stopped on close()."""
        proc = start_gunicorn(model, port, log_path or self.root / f"gunicorn-{port}.log", dict(env or {}), app)
        self._procs.append(proc)
        return proc

    def worker(self, model: str, name: str, env: Mapping[str, str] | None = None) -> AsyncWorker:
        """`python -m serving.job_worker` for `model`, output in <root>/<name>.log; killed on close() if running."""
        worker = AsyncWorker(model, self.root / f"{name}.log", env)
        self._workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self._workers:
            worker.kill()
        for proc in reversed(self._procs):
            stop_process(proc)
        self.stop_mlflow()
        self.postgres.destroy()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
