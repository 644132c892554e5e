"""The bodies of the `monitor_<model>` DAG's tasks: which day(s) to monitor, then `scoring.monitoring.monitor`.

`scoring.monitoring` (MLflow, matplotlib, scikit-learn) is imported inside the tasks so that DAG parsing stays fast.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Param

from airflow_tasks.hooks import serving_db_connection
from airflow_tasks.run_dates import conf_date, run_date
from scoring.spec import ModelSpec

log = logging.getLogger(__name__)


def monitor_params() -> dict[str, Param]:
    return {"date": Param(None, type=["null", "string"], format="date",
                          description="Prediction date (YYYY-MM-DD) to monitor. Default: the date(s) the triggering "
                                      "predict runs swapped in, else the latest predicted date.")}


def _event_days(context: Mapping[str, Any]) -> list[dt.date]:
    """Dates named by the predictions Asset events that triggered this run (the predict DAG's swap puts the
    date into the event's extra)."""
    days = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            day = conf_date((getattr(event, "extra", None) or {}).get("date"), "date")
            if day is not None:
                days.add(day)
    return sorted(days)


def _latest_predicted_day(spec: ModelSpec) -> dt.date | None:
    with serving_db_connection() as conn:
        row = conn.execute("SELECT prediction_date FROM ops.batch_runs WHERE model_name = %s AND status = 'success' "
                           "ORDER BY finished_at DESC LIMIT 1", (spec.name,)).fetchone()
    return row[0] if row else None


def monitored_days(spec: ModelSpec, context: Mapping[str, Any]) -> list[dt.date]:
    """conf `date`; else the dates of the triggering predictions events; else the latest predicted date;
    else the run's own date."""
    day = conf_date(context["params"].get("date"), "date")
    if day is not None:
        return [day]
    days = _event_days(context)
    if days:
        return days
    latest = _latest_predicted_day(spec) if context.get("triggering_asset_events") else None
    return [latest or run_date(context)]


def monitor(spec: ModelSpec, context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Checks, ops rows, MLflow run and report per monitored day; the summaries go on to `alert`."""
    from airflow.sdk.exceptions import AirflowFailException

    from scoring.monitoring.monitor import MonitorError, monitor_day
    from scoring.monitoring.shadow import challenger_checks

    summaries = []
    for day in monitored_days(spec, context):
        with serving_db_connection() as conn:
            try:
                result = monitor_day(conn, spec, day, context["run_id"], extra_checks=challenger_checks)
            except MonitorError as exc:
                raise AirflowFailException(str(exc)) from exc  # the day is not there: a retry will not help
        summary = result.summary()
        log.info("monitor %s %s: %s; alerts: %s; warnings: %s; report: %s", spec.name, day, summary["status"],
                 summary["alerts"] or "none", summary["warnings"] or "none", summary["report_url"])
        summaries.append(summary)
    return summaries


def alert(spec: ModelSpec, summaries: list[dict[str, Any]]) -> None:
    """Fail with every check that crossed its alert threshold (per day), naming the threshold and the report."""
    from airflow.sdk.exceptions import AirflowFailException

    found = [f"{s['date']}: {a}" for s in summaries for a in s["alerts"]]
    if found:
        reports = ", ".join(s["report_url"] for s in summaries if s.get("report_url"))
        raise AirflowFailException(f"model '{spec.name}': {len(found)} alert(s): " + "; ".join(found)
                                   + (f". Report: {reports}" if reports else ""))
    log.info("model %s: no alert (%s)", spec.name, ", ".join(f"{s['date']} {s['status']}" for s in summaries))
