"""The body of the one gate task, run by `train_<model>` (on the version it just trained) and by
`evaluate_<model>` (on any registered version, e.g. one logged from a notebook: conf {"version": "7"}).
Both call `scoring.gate.evaluate_version`; a promotion publishes `promotion_asset(spec)` (through the task's
alias outlet), on which predict_<model> re-scores the latest predicted day with the new champion.

`scoring.gate` (MLflow, XGBoost) is imported inside the task: DAG parsing stays fast.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, AssetAlias, Param

from airflow_tasks.hooks import serving_db_connection
from airflow_tasks.run_dates import ConfError, conf_date, run_date
from scoring.spec import ModelSpec

log = logging.getLogger(__name__)


def promotion_asset(spec: ModelSpec) -> Asset:
    """Updated whenever the gate moves the `champion` alias of the model: the predict DAG schedules on it (as
    well as on its cron), so a new champion's predictions replace the day's at once."""
    return Asset(name=f"champion.{spec.name}", uri=f"x-serving-registry://{spec.name}/champion", group="promotions")


def promotion_alias(spec: ModelSpec) -> AssetAlias:
    """The gate's outlet: an event is added through it only when the gate promotes (a refusal publishes nothing)."""
    return AssetAlias(name=f"promotion.{spec.name}", group="promotions")


def evaluate_params() -> dict[str, Param]:
    """The run parameters of an evaluate DAG (checked when a run is triggered, and again by the task)."""
    return {
        "version": Param(None, type=["null", "string"], pattern=r"^[0-9]+$",
                         description='The registered version to judge, e.g. "7" (required).'),
        "end_date": Param(None, type=["null", "string"], format="date",
                          description="Judge on the held-out part of the window that ends the day before this date "
                                      "(YYYY-MM-DD, exclusive), as train_<model> would. Default: the run's "
                                      "logical date."),
    }


def conf_version(context: Mapping[str, Any]) -> str:
    value = context["params"].get("version")
    if value is None or not str(value).isdigit():
        raise ConfError(f'conf \'version\': expected the version number to judge, e.g. {{"version": "7"}}, '
                        f"got {value!r}")
    return str(value)


def evaluate(spec: ModelSpec, context: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluate DAG's task: judge conf `version` on the window ending at conf `end_date` (or the run's date)."""
    end = conf_date(context["params"].get("end_date"), "end_date") or run_date(context)
    return gate(spec, conf_version(context), end, context)


def gate(spec: ModelSpec, version: str, end: dt.date, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Judge registered `version` (fit to the spec, then against the champion on the same held-out rows); move the
    alias or not; publish the promotion Asset when it promotes."""
    from scoring.gate import evaluate_version

    with serving_db_connection() as conn:
        decision = evaluate_version(spec, version, conn, end)
    outcome = "PROMOTED" if decision.promoted else "REFUSED"
    (log.info if decision.promoted else log.warning)(
        "gate decision for %s version %s: %s. Reason: %s. Figures: %s", spec.name, version, outcome,
        decision.reason, json.dumps(decision.figures, sort_keys=True))
    if decision.promoted and context is not None:
        context["outlet_events"][promotion_alias(spec)].add(
            promotion_asset(spec), extra={"version": str(version), "reason": decision.reason})
        log.info("model %s: published %s (predict_%s re-scores with version %s)", spec.name,
                 promotion_asset(spec).name, spec.name, version)
    return {"version": str(version), "promoted": decision.promoted, "reason": decision.reason,
            "figures": decision.figures, "compared_with": decision.champion_version,
            "challenger": decision.challenger}
