"""The body of the `demo_features` DAG's task: one day's demo snapshot through `scoring.demo_data`."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from airflow_tasks.hooks import serving_db_connection
from airflow_tasks.run_dates import ConfError, run_date

log = logging.getLogger(__name__)


def _positive_int(params: Mapping[str, Any], key: str, minimum: int) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfError(f"conf '{key}': expected an integer >= {minimum}, got {value!r}")
    return value


def write_snapshot(context: Mapping[str, Any]) -> dict[str, Any]:
    """Generate and write the snapshot of the run's date (replacing that day's partition)."""
    from scoring.demo_data import TABLE, generate_day, write_day

    day = run_date(context)
    customers = _positive_int(context["params"], "customers", 1)
    seed = _positive_int(context["params"], "seed", 0)
    started = time.perf_counter()
    frame = generate_day(day, customers, seed)
    with serving_db_connection() as conn:
        rows = write_day(conn, frame, day)
    seconds = time.perf_counter() - started
    log.info("demo features: wrote %d rows for %s into %s (replacing the day) in %.1fs", rows, day, TABLE, seconds)
    return {"date": str(day), "rows": rows, "seconds": round(seconds, 2)}
