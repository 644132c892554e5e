"""PostgreSQL connections for the core (psycopg 3). The URL comes from DATABASE_URL."""

from __future__ import annotations

import os

import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:55432/serving"


def database_url() -> str:
    return os.environ.get("DATABASE_URL", DEFAULT_URL)


def connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url or database_url(), **kwargs)
