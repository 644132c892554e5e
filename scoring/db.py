"""PostgreSQL connections for the core (psycopg 3). The URL comes from DATABASE_URL (scoring/settings.py)."""

from __future__ import annotations

import psycopg

from scoring.settings import REGISTRY, read

DEFAULT_URL: str = REGISTRY["DATABASE_URL"].default  # the local stack's serving database


def database_url() -> str:
    return read("DATABASE_URL")


def connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url or database_url(), **kwargs)
