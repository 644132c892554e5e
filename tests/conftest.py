"""Test session services from the throwaway platform (testing/platform.py), each started on first use: a
PostgreSQL cluster, a real MLflow tracking server, demo features, trained/registered demo models and an Airflow
metadata database.

The cluster's port is reserved in pytest_configure and DATABASE_URL and Airflow's settings point at it there,
before anything imports Airflow or MLflow; the cluster itself starts only when a test uses a service fixture.
Such tests (and `integration` tests, which start services of their own) are marked `services`, so
`pytest -m "not services"` (`make test-fast`) runs everything else without starting PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import time

import pytest

from stack.pg import PgCluster
from testing.calibration import SAMPLE_EVERY, calibration_samples, sample
from testing.platform import Platform, airflow_environment, migrate_airflow_db, train_champion

FEATURE_END = dt.date(2026, 11, 1)  # last day of demo feature history in the test database
FEATURE_DAYS = 30
CUSTOMERS = 2_000
# A test that uses any of these needs the platform's services; it is marked `services` automatically.
SERVICE_FIXTURES = frozenset({"pg_cluster", "db_url", "mlflow_server", "demo_features", "trained_models",
                              "airflow_db"})

_state: dict = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--lane-target", type=float, default=None, metavar="RATIO",
                     help="print the run's wall time as a multiple of testing/calibration.py's workload, measured "
                          "in the same run, against this target (make test-fast sets it); reported, not enforced")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput") and session.config.getoption("lane_target") is not None:
        _state["calibration"] = calibration_samples()
        _state["started"] = time.perf_counter()


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    """One calibration sample every SAMPLE_EVERY tests: the machine's speed while the run goes, not only at its
    ends (a busy moment in the middle slows the tests and the samples alike)."""
    if "calibration" in _state:
        _state["tests"] = _state.get("tests", 0) + 1
        if _state["tests"] % SAMPLE_EVERY == 0:
            _state["calibration"].append(sample())


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The run's time beside the machine's speed measured in the same run: their ratio is the fast lane's target,
    so that it means the same on a slower or busier machine."""
    if "started" not in _state:
        return
    elapsed = time.perf_counter() - _state["started"]
    samples = _state["calibration"] + calibration_samples()
    unit = statistics.median(samples)
    ratio = elapsed / unit
    line = (f"lane time {elapsed:.1f} s = {ratio:.0f} x calibration ({unit * 1000:.1f} ms: median of {len(samples)} "
            f"runs of testing/calibration.py's workload at the start, during and at the end of this run)")
    target = config.getoption("lane_target")
    terminalreporter.write_line(f"{line}; target < {target:.0f} x: {'met' if ratio < target else 'MISSED'}")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    platform = Platform("serving-tests-")  # reserves the PostgreSQL port; starts nothing yet
    _state["platform"] = platform
    postgres = platform.postgres
    os.environ.update({
        "DATABASE_URL": postgres.url("serving"),
        "TEST_PG_ADMIN_URL": postgres.url("postgres"),
        "TEST_ROOT": str(platform.root),
        **airflow_environment(platform.root / "airflow", postgres),
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:1",  # replaced by the mlflow_server fixture when used
        "GIT_PYTHON_REFRESH": "quiet",
    })


@pytest.hookimpl(tryfirst=True)  # before -m selects: the mark must be there when it looks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.services)


def pytest_unconfigure(config: pytest.Config) -> None:
    platform: Platform | None = _state.pop("platform", None)
    if platform is None:
        return
    if platform.postgres.started:
        # Close Airflow's pooled connections first: its atexit hook would otherwise roll back on a dead server.
        airflow_settings = sys.modules.get("airflow.settings")
        if airflow_settings is not None and hasattr(airflow_settings, "dispose_orm"):
            airflow_settings.dispose_orm(do_log=False)
    platform.close()


@pytest.fixture(scope="session")
def platform() -> Platform:
    return _state["platform"]


@pytest.fixture(scope="session")
def pg_cluster(platform: Platform) -> PgCluster:
    """The session's PostgreSQL cluster (serving, mlflow and airflow databases), started on first use."""
    return platform.postgres.start().cluster


@pytest.fixture(scope="session")
def db_url(pg_cluster: PgCluster, platform: Platform) -> str:
    """The serving database with every migration applied."""
    return platform.database("serving")


@pytest.fixture(scope="session")
def mlflow_server(pg_cluster: PgCluster, platform: Platform) -> str:
    """A real MLflow tracking server + registry (PostgreSQL backend store, local artifacts)."""
    yield platform.mlflow()
    platform.stop_mlflow()


@pytest.fixture(scope="session")
def demo_features(db_url: str, platform: Platform) -> dt.date:
    """FEATURE_DAYS days of demo snapshots ending at FEATURE_END; returns the last day."""
    return platform.features(FEATURE_END, FEATURE_DAYS, CUSTOMERS)


@pytest.fixture(scope="session")
def specs():
    from scoring.spec import load_specs

    return load_specs()


@pytest.fixture(scope="session")
def trained_models(mlflow_server: str, demo_features: dt.date, db_url: str, specs) -> dict[str, str]:
    """Both demo models trained on the test history and promoted to champion; returns name -> version."""
    versions = {}
    for name, spec in specs.items():
        result = train_champion(spec, db_url, demo_features + dt.timedelta(days=1))
        assert result.decision.promoted, result.decision.reason
        versions[name] = result.version
    return versions


@pytest.fixture
def conn(db_url: str):
    """An autocommit connection to the serving database, closed after the test."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def scorer():
    """A real scorer over a small churn booster trained in-process (tests/inprocess.py): no MLflow, no database."""
    from inprocess import churn_spec, train_scorer

    return train_scorer(churn_spec())


@pytest.fixture(scope="session")
def airflow_db(pg_cluster: PgCluster) -> str:
    """Airflow's metadata database on the test cluster, migrated (needed by dag.test())."""
    migrate_airflow_db()
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
