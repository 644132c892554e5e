"""Serving settings from the environment (one deployment per model: SERVING_MODEL names it)."""

from __future__ import annotations

import os
from dataclasses import dataclass


class ConfigError(ValueError):
    """An environment setting is missing or malformed; the message names the variable."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    model: str
    model_ref: str = "champion"
    poll_interval_s: float = 10.0  # how often each worker checks the alias
    api_token: str | None = None  # bearer token for prediction routes; None = open
    max_body_bytes: int = 1_048_576
    max_rows: int = 1_000
    booster_threads: int = 1  # one thread per booster: gunicorn workers already use the cores
    db_pool_min: int = 1
    db_pool_max: int = 4
    db_timeout_s: float = 2.0  # pool wait / connect timeout: a down DB answers 503 fast
    latest_ttl_s: float = 2.0  # cache of the latest complete prediction date
    database_url: str | None = None

    @classmethod
    def from_env(cls, model: str | None = None) -> Settings:
        name = model or os.environ.get("SERVING_MODEL", "")
        if not name:
            raise ConfigError("SERVING_MODEL is not set: name the model (from models.yaml) this deployment serves")
        return cls(
            model=name,
            model_ref=os.environ.get("SERVING_MODEL_REF", "champion"),
            poll_interval_s=_env_float("SERVING_POLL_INTERVAL_S", 10.0),
            api_token=os.environ.get("SERVING_API_TOKEN") or None,
            max_body_bytes=_env_int("SERVING_MAX_BODY_BYTES", 1_048_576),
            max_rows=_env_int("SERVING_MAX_ROWS", 1_000),
            booster_threads=_env_int("SERVING_BOOSTER_THREADS", 1),
            db_pool_min=_env_int("SERVING_DB_POOL_MIN", 1),
            db_pool_max=_env_int("SERVING_DB_POOL_MAX", 4),
            db_timeout_s=_env_float("SERVING_DB_TIMEOUT_S", 2.0),
            latest_ttl_s=_env_float("SERVING_LATEST_TTL_S", 2.0),
            database_url=os.environ.get("DATABASE_URL") or None,
        )
