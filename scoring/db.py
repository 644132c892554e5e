"""PostgreSQL connections for the core (psycopg 3). The URL comes from DATABASE_URL (scoring/settings.py)."""

from __future__ import annotations

import psycopg

from scoring.settings import CoreSettings


def database_url() -> str:
    return CoreSettings.from_env().database_url


def connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url or database_url(), **kwargs)
