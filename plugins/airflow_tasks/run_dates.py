"""The date a DAG run is about, from its Airflow context: the logical date, or `run_after` for runs
triggered without one (Airflow 3 allows manual runs with no logical date)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


class ConfError(ValueError):
    """A DAG run's conf/params value is invalid; the message names the key."""


def run_date(context: Mapping[str, Any]) -> dt.date:
    """The run's logical date (UTC calendar day), falling back to the run's run_after."""
    moment = context.get("logical_date")
    if moment is None:
        moment = context["dag_run"].run_after
    return moment.date()


def conf_date(value: Any, key: str) -> dt.date | None:
    """An optional ISO date from conf/params (None or '' means "not given")."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise ConfError(f"conf '{key}': expected a date YYYY-MM-DD, got {value!r}") from exc
