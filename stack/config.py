"""Where the local stack lives and how its services are reached: paths, ports and URLs.

Everything comes from the environment with the documented defaults, so the tests can run a second stack in a
temp directory on free ports:

    STACK_HOME          state folder (default <repo>/.local): pgdata, logs, PID files, airflow home, artifacts
    STACK_PG_PORT       the project-local PostgreSQL (default 55432, as scoring.db.DEFAULT_URL)
    STACK_MLFLOW_PORT   MLflow tracking server (default from mlflow/server.env: 5000)
    STACK_AIRFLOW_PORT  Airflow api-server (default 8080)
    STACK_SERVING_PORT  first serving app (default 8000; the next model gets 8001, ...)
    STACK_COMPONENTS    comma list of postgres,mlflow,airflow,serving,worker (default: all)
    DATABASE_URL        when set, an existing PostgreSQL server: no local cluster is started
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
MLFLOW_CONFIG = REPO / "mlflow" / "server.env"
COMPONENTS = ("postgres", "mlflow", "airflow", "serving", "worker")
DATABASES = ("serving", "mlflow", "airflow")


class ConfigError(ValueError):
    """A stack setting is malformed; the message names the variable."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments ignored (the format docker's env_file also reads)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        values[key.strip()] = value.strip()
    return values


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name} must be a TCP port number (1-65535), got {raw!r}")
    return int(raw)


def with_database(url: str, dbname: str, driver: str | None = None) -> str:
    """The same server URL pointing at another database (and optionally another SQLAlchemy driver)."""
    parts = urlsplit(url)
    scheme = driver or parts.scheme
    return urlunsplit((scheme, parts.netloc, f"/{dbname}", parts.query, ""))


@dataclass(frozen=True)
class StackConfig:
    home: Path
    pg_port: int = 55432
    external_db_url: str | None = None
    mlflow_port: int = 5000
    mlflow_workers: int = 1
    mlflow_backend_db: str = "mlflow"
    mlflow_artifacts: str = "mlartifacts"
    airflow_port: int = 8080
    serving_port: int = 8000
    components: frozenset[str] = field(default_factory=lambda: frozenset(COMPONENTS))
    host: str = "127.0.0.1"
    # A fixed login for the local stack only (SimpleAuthManager); the container deployment takes it from .env.
    admin_user: str = "admin"
    admin_password: str = "admin"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        mlflow = read_env_file(MLFLOW_CONFIG)
        components = frozenset(c.strip() for c in env.get("STACK_COMPONENTS", ",".join(COMPONENTS)).split(",")
                               if c.strip())
        unknown = components - set(COMPONENTS)
        if unknown:
            raise ConfigError(f"STACK_COMPONENTS: unknown component(s) {sorted(unknown)}; "
                              f"choose from {', '.join(COMPONENTS)}")
        external = env.get("DATABASE_URL") or None
        if external:
            components = components - {"postgres"}
        workers = mlflow.get("MLFLOW_WORKERS", "1")
        if not workers.isdigit():
            raise ConfigError(f"MLFLOW_WORKERS in {MLFLOW_CONFIG} must be an integer, got {workers!r}")
        return cls(
            home=Path(env.get("STACK_HOME") or REPO / ".local").resolve(),
            pg_port=_port(env, "STACK_PG_PORT", _port(env, "PGPORT_LOCAL", 55432)),
            external_db_url=external,
            mlflow_port=_port(env, "STACK_MLFLOW_PORT", _port(mlflow, "MLFLOW_PORT", 5000)),
            mlflow_workers=int(workers),
            mlflow_backend_db=mlflow.get("MLFLOW_BACKEND_DB", "mlflow"),
            mlflow_artifacts=mlflow.get("MLFLOW_ARTIFACTS_DIR", "mlartifacts"),
            airflow_port=_port(env, "STACK_AIRFLOW_PORT", 8080),
            serving_port=_port(env, "STACK_SERVING_PORT", 8000),
            components=components,
            host=mlflow.get("MLFLOW_HOST", "127.0.0.1"),
            admin_password=env.get("STACK_ADMIN_PASSWORD") or "admin",
        )

    # --- paths -------------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / self.mlflow_artifacts

    def pid_file(self, service: str) -> Path:
        return self.run_dir / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"

    # --- URLs --------------------------------------------------------------------------------------------
    @property
    def local_postgres(self) -> bool:
        return self.external_db_url is None

    def db_url(self, dbname: str = "serving", driver: str = "postgresql") -> str:
        if self.external_db_url:
            return with_database(self.external_db_url, dbname, driver)
        return f"{driver}://postgres@{self.host}:{self.pg_port}/{dbname}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    def serving_url(self, index: int) -> str:
        return f"http://{self.host}:{self.serving_port + index}"

    def wants(self, component: str) -> bool:
        return component in self.components
