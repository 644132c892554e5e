"""Where the local stack lives and how its services are reached: paths, ports and URLs.

Everything comes from the environment (STACK_*, PG_BINDIR, DATABASE_URL: declared with their defaults in
scoring/settings.py, listed in the README's settings table), so the tests can run a second stack in a temp
directory on free ports. DATABASE_URL keeps its one meaning, the serving database: when it is set, `make up` uses
the server it names (the mlflow and airflow databases beside it) and starts no local cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from scoring.settings import REGISTRY, SettingsError, env_names, is_set, load, read, setting

REPO = Path(__file__).resolve().parent.parent
MLFLOW_CONFIG = REPO / "mlflow" / "server.env"
COMPONENTS: tuple[str, ...] = REGISTRY["STACK_COMPONENTS"].choices
EXECUTORS: tuple[str, ...] = REGISTRY["STACK_EXECUTOR"].choices
DATABASES = ("serving", "mlflow", "airflow")


class ConfigError(SettingsError):
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


def with_database(url: str, dbname: str, driver: str | None = None) -> str:
    """The same server URL pointing at another database (and optionally another SQLAlchemy driver)."""
    parts = urlsplit(url)
    scheme = driver or parts.scheme
    return urlunsplit((scheme, parts.netloc, f"/{dbname}", parts.query, ""))


@dataclass(frozen=True)
class StackConfig:
    home: Path
    pg_port: int = setting("STACK_PG_PORT")
    external_db_url: str | None = None
    mlflow_port: int = 5000
    mlflow_workers: int = 1
    mlflow_backend_db: str = "mlflow"
    mlflow_artifacts: str = "mlartifacts"
    airflow_port: int = setting("STACK_AIRFLOW_PORT")
    serving_port: int = setting("STACK_SERVING_PORT")
    replica_port: int | None = setting("STACK_REPLICA_PORT")  # None: serving_port + 100
    replica_grpc_port: int | None = setting("STACK_REPLICA_GRPC_PORT")  # None: serving_port + 200
    replicas: int = setting("STACK_SERVING_REPLICAS")
    job_replicas: int = setting("STACK_JOB_REPLICAS")  # threaded replicas per model for the job routes
    job_threads: int = setting("STACK_JOB_THREADS")
    canary_replicas: int = setting("STACK_CANARY_REPLICAS")  # per model, serving the `canary` alias
    rollout_check_s: float = setting("STACK_ROLLOUT_CHECK_S")
    unix_sockets: bool = setting("STACK_GATEWAY_UNIX")  # the gateway reaches the replicas over Unix sockets
    grpc_port: int = setting("STACK_GRPC_PORT")
    executor: str = setting("STACK_EXECUTOR")
    redis_port: int = setting("STACK_REDIS_PORT")
    components: frozenset[str] = setting("STACK_COMPONENTS")
    host: str = "127.0.0.1"
    # A fixed login for the local stack only (SimpleAuthManager); the container deployment takes it from .env.
    admin_user: str = "admin"
    admin_password: str = setting("STACK_ADMIN_PASSWORD")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        """From the environment; a bad value raises ConfigError naming the variable and the value."""
        try:
            return cls._from_env(env)
        except ConfigError:
            raise
        except SettingsError as exc:
            raise ConfigError(str(exc)) from None

    @classmethod
    def _from_env(cls, env: Mapping[str, str] | None) -> StackConfig:
        mlflow = read_env_file(MLFLOW_CONFIG)
        workers = mlflow.get("MLFLOW_WORKERS", "1")
        if not workers.isdigit():
            raise ConfigError(f"MLFLOW_WORKERS in {MLFLOW_CONFIG} must be an integer, got {workers!r}")
        mlflow_port = read("STACK_MLFLOW_PORT", env)
        if mlflow_port is None:  # the stack's MLflow settings file holds the default
            mlflow_port = read("STACK_MLFLOW_PORT", {"STACK_MLFLOW_PORT": mlflow.get("MLFLOW_PORT", "5000")})
        config = load(
            cls, env,
            home=(read("STACK_HOME", env) or REPO / ".local").resolve(),
            external_db_url=read("DATABASE_URL", env) if is_set("DATABASE_URL", env) else None,
            mlflow_port=mlflow_port,
            mlflow_workers=int(workers),
            mlflow_backend_db=mlflow.get("MLFLOW_BACKEND_DB", "mlflow"),
            mlflow_artifacts=mlflow.get("MLFLOW_ARTIFACTS_DIR", "mlartifacts"),
            host=mlflow.get("MLFLOW_HOST", "127.0.0.1"),
        )
        if config.external_db_url:  # an existing server: no local cluster
            config = dataclasses.replace(config, components=config.components - {"postgres"})
        return config

    def to_env(self) -> dict[str, str]:
        """This config as the STACK_* environment (from_env reads it back): for the stack's own helper processes
        (the rollout watcher), which must see the stack that started them, not the caller's environment."""
        env = {"STACK_HOME": str(self.home), "STACK_MLFLOW_PORT": str(self.mlflow_port)}
        for name, var in env_names(type(self)).items():
            value = getattr(self, name)
            if value is not None:
                env[var] = (",".join(sorted(value)) if isinstance(value, frozenset)
                            else str(value).lower() if isinstance(value, bool) else str(value))
        if self.external_db_url:
            env["DATABASE_URL"] = self.external_db_url
        return env

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

    @property
    def gateway_url(self) -> str:
        """The one entry point for every served model (nginx)."""
        return f"http://{self.host}:{self.serving_port}"

    def replica_port_of(self, model_index: int, replica: int) -> int:
        """The loopback port of one gunicorn replica (model in models.yaml order, replica from 0)."""
        base = self.replica_port or self.serving_port + 100
        return base + model_index * self.replicas + replica

    def replica_grpc_port_of(self, model_index: int, replica: int) -> int:
        """The loopback gRPC port of one gunicorn replica (its SERVING_GRPC_PORT), laid out as replica_port_of:
        the gateway's grpc_pass upstreams are these."""
        base = self.replica_grpc_port or self.serving_port + 200
        return base + model_index * self.replicas + replica

    def job_port_of(self, model_index: int, replica: int, models: int) -> int:
        """The loopback port of one job replica: after every model's sync replicas."""
        base = self.replica_port or self.serving_port + 100
        return base + models * self.replicas + model_index * self.job_replicas + replica

    def canary_port_of(self, model_index: int, replica: int, models: int) -> int:
        """The loopback port of one canary replica: after every model's sync and job replicas."""
        base = self.replica_port or self.serving_port + 100
        return base + models * (self.replicas + self.job_replicas) + model_index * self.canary_replicas + replica

    @property
    def grpc_url(self) -> str:
        """The gateway's gRPC listener (host:port, as gRPC clients take it)."""
        return f"{self.host}:{self.grpc_port}"

    def serving_url(self, index: int, replica: int = 0) -> str:
        return f"http://{self.host}:{self.replica_port_of(index, replica)}"

    def public_url(self, index: int) -> str:
        """Where clients reach a model: the gateway when it runs, else the model's first replica."""
        return self.gateway_url if self.wants("gateway") else self.serving_url(index)

    @property
    def gateway_dir(self) -> Path:
        return self.home / "gateway"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    def wants(self, component: str) -> bool:
        return component in self.components
