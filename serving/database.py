"""The serving database of one serving process: precomputed lookups (serving/lookup_queries.py) and the job
queue (serving/job_store.py) through ONE connection pool (serving/db_pool.py)."""

from __future__ import annotations

from scoring.spec import ModelSpec
from serving.db_pool import ServingPool
from serving.job_store import JobStore
from serving.lookup_queries import LookupQueries


class ServingDatabase(LookupQueries, JobStore):
    """What serving/lookups.py and serving/job_intake.py need from the database, on one pool."""

    def __init__(self, spec: ModelSpec, url: str, *, min_size: int = 1, max_size: int = 4, timeout_s: float = 2.0,
                 latest_ttl_s: float = 2.0, statement_timeout_ms: int | None = None,
                 lock_timeout_ms: int | None = None) -> None:
        pool = ServingPool(spec.name, url, min_size=min_size, max_size=max_size, timeout_s=timeout_s,
                           statement_timeout_ms=statement_timeout_ms, lock_timeout_ms=lock_timeout_ms)
        LookupQueries.__init__(self, spec, pool, latest_ttl_s=latest_ttl_s)
        JobStore.__init__(self, pool)

    def open(self) -> ServingDatabase:
        self.pool.open()
        return self

    def close(self) -> None:
        self.pool.close()

    def ping(self) -> bool:
        return self.pool.ping()
