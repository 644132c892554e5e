"""One serving process's connection pool to the serving database, shared by lookups (serving/lookup_queries.py)
and the job queue (serving/job_store.py). Every failure to reach the database surfaces as StoreUnavailable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from scoring import settings
from serving.failures import StoreUnavailable


@dataclass(frozen=True)
class QueryLimits:
    """What bounds every serving query (the defaults of a pool not given its own)."""

    statement_timeout_ms: int = settings.setting("SERVING_DB_STATEMENT_TIMEOUT_MS")
    lock_timeout_ms: int = settings.setting("SERVING_DB_LOCK_TIMEOUT_MS")


_DOWN_HOLD_S = 1.0  # after a pool timeout, requests fail fast for this long before the pool is tried again


class ServingPool:
    def __init__(self, name: str, url: str, *, min_size: int = 1, max_size: int = 4, timeout_s: float = 2.0,
                 statement_timeout_ms: int | None = None, lock_timeout_ms: int | None = None) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._down_until = 0.0  # monotonic time until which the database counts as unreachable
        # Every serving query is bounded: one stuck behind a lock (a batch swap queued behind an analyst's long
        # read) or on a sick database fails fast as StoreUnavailable (503) instead of holding the worker.
        limits = settings.load(QueryLimits)
        statement_ms = statement_timeout_ms or limits.statement_timeout_ms
        lock_ms = lock_timeout_ms or limits.lock_timeout_ms
        options = f"-c statement_timeout={int(statement_ms)} -c lock_timeout={int(lock_ms)}"
        # connect_timeout bounds a connection attempt; the pool's `timeout` bounds a request waiting for one.
        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False, timeout=timeout_s,
                                   kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s)),
                                           "options": options},
                                   reconnect_timeout=3600 * 24 * 365, name=f"serving-{name}")

    def open(self) -> None:
        self.pool.open(wait=False)  # never block worker start on the database

    def close(self) -> None:
        self.pool.close(timeout=2)

    def wait(self, timeout: float) -> None:
        """Block until the pool holds its minimum of connections (tests that need a warm pool)."""
        self.pool.wait(timeout=timeout)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; an unreachable or unmigrated database surfaces as StoreUnavailable."""
        if time.monotonic() < self._down_until:  # just found unreachable: answer at once, keep the worker free
            raise StoreUnavailable(f"serving database unavailable: no connection within {self.timeout_s:g}s "
                                   f"(retried every {_DOWN_HOLD_S:g}s)")
        try:
            with self.pool.connection(timeout=self.timeout_s) as conn:
                yield conn
        except PoolTimeout as exc:
            # Every request would wait timeout_s for the pool while the database is down, holding a sync
            # worker (live predictions queue behind it): for a moment, the next ones fail fast instead.
            self._down_until = time.monotonic() + _DOWN_HOLD_S
            raise StoreUnavailable(f"serving database unavailable: no connection within {self.timeout_s:g}s") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"serving database unavailable: {exc}".strip()) from exc
        except psycopg.errors.UndefinedTable as exc:  # not migrated yet: unavailable, not a server error
            raise StoreUnavailable(f"serving database is not migrated for model '{self.name}': "
                                   f"{exc}".strip()) from exc

    def run(self, query: Any, params: tuple) -> list[tuple]:
        with self.connection() as conn:
            return conn.execute(query, params, prepare=True).fetchall()

    def ping(self) -> bool:
        try:
            self.run("SELECT 1", ())
            return True
        except StoreUnavailable:
            return False
