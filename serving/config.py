"""Serving settings from the environment (one deployment per model: SERVING_MODEL names it).

Names, defaults and checks are declared once in scoring/settings.py; these dataclasses only pick their fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scoring.settings import SettingsError, load, setting


class ConfigError(SettingsError):
    """An environment setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """The Flask app's (and the async worker's) settings."""

    model: str = setting("SERVING_MODEL")
    model_ref: str = setting("SERVING_MODEL_REF")
    poll_interval_s: float = setting("SERVING_POLL_INTERVAL_S")  # how often each worker checks the alias
    allow_ungated: bool = setting("SERVING_ALLOW_UNGATED")  # load versions the gate did not promote
    api_token: str | None = setting("SERVING_API_TOKEN")  # one token with every scope (serving/auth.py)
    tokens: str | None = setting("SERVING_TOKENS")  # named, scoped token entries (hashes only)
    tokens_file: Path | None = setting("SERVING_TOKENS_FILE")
    max_body_bytes: int = setting("SERVING_MAX_BODY_BYTES")
    max_rows: int = setting("SERVING_MAX_ROWS")
    job_max_records: int = setting("SERVING_JOB_MAX_RECORDS")
    job_bulk_max_jobs: int = setting("SERVING_JOB_BULK_MAX_JOBS")
    job_ttl_s: float = setting("SERVING_JOB_TTL_S")  # 0 = queued jobs never expire
    booster_threads: int = setting("SERVING_BOOSTER_THREADS")  # gunicorn workers already use the cores
    db_pool_min: int = setting("SERVING_DB_POOL_MIN")
    db_pool_max: int = setting("SERVING_DB_POOL_MAX")
    db_timeout_s: float = setting("SERVING_DB_TIMEOUT_S")  # pool wait / connect timeout: a down DB answers 503 fast
    latest_ttl_s: float = setting("SERVING_LATEST_TTL_S")  # cache of the latest complete prediction date
    database_url: str = setting("DATABASE_URL")
    payload_sample_rate: float = setting("SERVING_PAYLOAD_SAMPLE_RATE")  # 0 = payload logging off
    payload_buffer_rows: int = setting("SERVING_PAYLOAD_BUFFER_ROWS")
    payload_flush_s: float = setting("SERVING_PAYLOAD_FLUSH_S")

    @classmethod
    def from_env(cls, model: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
        given = {"model": model} if model else {}
        settings = load(cls, env, **given)
        if not settings.model:
            raise ConfigError("SERVING_MODEL is not set: name the model (from models.yaml) this deployment serves")
        if settings.db_pool_min > settings.db_pool_max:
            raise ConfigError(f"SERVING_DB_POOL_MIN={settings.db_pool_min} is above "
                              f"SERVING_DB_POOL_MAX={settings.db_pool_max}")
        return settings


@dataclass(frozen=True)
class GunicornSettings:
    """What serving/gunicorn.conf.py hands to gunicorn."""

    model: str | None = setting("SERVING_MODEL")
    bind: str = setting("SERVING_BIND")
    workers: int = setting("SERVING_WORKERS")
    threads: int = setting("SERVING_THREADS")
    worker_class: str | None = setting("SERVING_WORKER_CLASS")
    grpc_port: int = setting("SERVING_GRPC_PORT")  # 0: no gRPC (serving/grpc/server.py)
    grpc_threads: int = setting("SERVING_GRPC_THREADS")  # None: gthread when threads > 1, else sync
    timeout_s: int = setting("SERVING_TIMEOUT_S")
    graceful_timeout_s: int = setting("SERVING_GRACEFUL_TIMEOUT_S")
    keepalive_s: int = setting("SERVING_KEEPALIVE_S")
    backlog: int = setting("SERVING_BACKLOG")
    limit_request_line: int = setting("SERVING_LIMIT_REQUEST_LINE")
    limit_request_fields: int = setting("SERVING_LIMIT_REQUEST_FIELDS")
    limit_request_field_size: int = setting("SERVING_LIMIT_REQUEST_FIELD_SIZE")
    max_requests: int = setting("SERVING_MAX_REQUESTS")
    log_level: str = setting("SERVING_LOG_LEVEL")
    access_log: str = setting("SERVING_ACCESS_LOG")  # "" = off
    metrics_dir: Path | None = setting("PROMETHEUS_MULTIPROC_DIR")
    mlflow_max_retries: int = setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    mlflow_backoff_factor: int = setting("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    mlflow_timeout_s: int = setting("MLFLOW_HTTP_REQUEST_TIMEOUT")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GunicornSettings:
        return load(cls, env)

    @property
    def effective_worker_class(self) -> str:
        return self.worker_class or ("gthread" if self.threads > 1 else "sync")
