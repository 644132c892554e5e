"""Test session services: a throwaway PostgreSQL cluster (always), and on demand a real MLflow tracking
server, demo features, trained/registered demo models and an Airflow metadata database.

The cluster starts in pytest_configure so that DATABASE_URL and Airflow's settings are in the environment
before anything imports Airflow or MLflow.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from stack.pg import PgCluster, free_port

REPO = Path(__file__).resolve().parent.parent
FEATURE_END = dt.date(2026, 11, 1)  # last day of demo feature history in the test database
FEATURE_DAYS = 30
CUSTOMERS = 2_000

_state: dict = {}


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    root = Path(tempfile.mkdtemp(prefix="serving-tests-"))
    os.chmod(root, 0o755)
    cluster = PgCluster(root / "pgdata", free_port())
    cluster.init()
    cluster.start()
    for db in ("serving", "mlflow", "airflow"):
        cluster.create_database(db)
    _state.update(root=root, cluster=cluster)
    airflow_home = root / "airflow"
    airflow_home.mkdir()
    os.environ.update({
        "DATABASE_URL": cluster.url("serving"),
        "TEST_PG_ADMIN_URL": cluster.url("postgres"),
        "TEST_ROOT": str(root),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cluster.url("airflow", "postgresql+psycopg"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW_CONN_SERVING_DB": cluster.url("serving"),
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:1",  # replaced by the mlflow_server fixture when used
        "GIT_PYTHON_REFRESH": "quiet",
    })


def pytest_unconfigure(config: pytest.Config) -> None:
    cluster = _state.get("cluster")
    if cluster is not None:
        # Close Airflow's pooled connections first: its atexit hook would otherwise roll back on a dead server.
        airflow_settings = sys.modules.get("airflow.settings")
        if airflow_settings is not None and hasattr(airflow_settings, "dispose_orm"):
            airflow_settings.dispose_orm(do_log=False)
        cluster.destroy()
        shutil.rmtree(_state["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> PgCluster:
    return _state["cluster"]


@pytest.fixture(scope="session")
def db_url(pg_cluster: PgCluster) -> str:
    """The serving database with every migration applied."""
    from scoring.migrate import apply_migrations

    url = pg_cluster.url("serving")
    apply_migrations(url)
    return url


@pytest.fixture(scope="session")
def mlflow_server(pg_cluster: PgCluster) -> str:
    """A real MLflow tracking server + registry (PostgreSQL backend store, local artifacts)."""
    from stack.services import start_mlflow, stop_process

    port = free_port()
    root: Path = _state["root"]
    proc = start_mlflow(pg_cluster.url("mlflow", "postgresql+psycopg"), root / "mlartifacts", port,
                        root / "mlflow.log")
    uri = f"http://127.0.0.1:{port}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    stop_process(proc)


@pytest.fixture(scope="session")
def demo_features(db_url: str) -> dt.date:
    """FEATURE_DAYS days of demo snapshots ending at FEATURE_END; returns the last day."""
    from scoring.demo_data import seed_history

    seed_history(FEATURE_END, FEATURE_DAYS, CUSTOMERS, url=db_url)
    return FEATURE_END


@pytest.fixture(scope="session")
def specs():
    from scoring.spec import load_specs

    return load_specs()


@pytest.fixture(scope="session")
def trained_models(mlflow_server: str, demo_features: dt.date, db_url: str, specs) -> dict[str, str]:
    """Both demo models trained on the test history and promoted to champion; returns name -> version."""
    from scoring.db import connect
    from scoring.training import train_and_register

    versions = {}
    with connect(db_url) as conn:
        for name, spec in specs.items():
            result = train_and_register(spec, conn, demo_features + dt.timedelta(days=1))
            assert result.decision.promoted, result.decision.reason
            versions[name] = result.version
    return versions


@pytest.fixture(scope="session")
def airflow_db(pg_cluster: PgCluster) -> str:
    """Airflow's metadata database on the test cluster, migrated (needed by dag.test())."""
    out = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                         capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
