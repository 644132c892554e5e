"""The bodies of the `train_<model>` DAG's tasks: Airflow context in, calls to `scoring.training`, XCom-able
dicts out. Each step logs what it decided and with which figures, so the task log tells the whole story.

`scoring.training` (MLflow, XGBoost, scikit-learn) is imported inside the tasks: DAG parsing and Airflow's
plugin loading, which import this module, stay fast.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Param

from airflow_tasks import gate_tasks
from airflow_tasks.hooks import serving_db_connection
from airflow_tasks.run_dates import ConfError, conf_date, run_date
from scoring.spec import XGBOOST_PARAMS, ModelSpec, validate_xgboost_params

log = logging.getLogger(__name__)


def run_kind(context: Mapping[str, Any]) -> str:
    """'scheduled', 'asset_triggered', 'manual' or 'backfill': how the run was started."""
    kind = getattr(context.get("dag_run"), "run_type", "")
    return str(getattr(kind, "value", kind))


def _first_start_skip(spec: ModelSpec, context: Mapping[str, Any], reason: str) -> None:
    """Skip (not fail) a scheduled run of a model that has no champion yet: a fresh platform has nothing to
    train on until features arrive, and nothing is broken. With a champion, the same problem fails the run."""
    from airflow.sdk.exceptions import AirflowSkipException

    from scoring.registry import CHAMPION, AliasNotFoundError, resolve_version

    if run_kind(context) != "scheduled":
        return
    try:
        resolve_version(spec.name, CHAMPION)
    except AliasNotFoundError as exc:
        raise AirflowSkipException(f"model '{spec.name}' has no champion yet and {reason}; skipped, not failed "
                                   f"(a first start: trigger train_{spec.name} once features are loaded)") from exc


def train_params() -> dict[str, Param]:
    """The run parameters of a training DAG (checked when a run is triggered, and again by the tasks)."""
    return {
        "end_date": Param(
            None, type=["null", "string"], format="date",
            description="Train on the window that ends the day before this date (YYYY-MM-DD, exclusive). "
                        "Default: the run's logical date."),
        "xgboost_overrides": Param(
            {}, type="object", properties=XGBOOST_PARAMS, additionalProperties=False,
            description="XGBoost parameters replacing the spec's for this run only, e.g. "
                        '{"n_estimators": 1, "max_depth": 1} for a deliberately weak candidate.'),
    }


def end_date(context: Mapping[str, Any]) -> dt.date:
    """conf/params `end_date`, else the run's logical date."""
    return conf_date(context["params"].get("end_date"), "end_date") or run_date(context)


def overrides(context: Mapping[str, Any]) -> dict[str, Any]:
    value = context["params"].get("xgboost_overrides") or {}
    try:
        return validate_xgboost_params(value, where="xgboost_overrides")
    except ValueError as exc:
        raise ConfError(f"conf {exc}") from exc


def check_window(spec: ModelSpec, context: Mapping[str, Any]) -> dict[str, Any]:
    """Fail early, with the reason, when the window cannot be trained on; validate the run's conf too."""
    from scoring import training

    end = end_date(context)
    params = training.fit_params(spec, overrides(context))
    with serving_db_connection() as conn:
        try:
            stats = training.check_window(conn, spec, end)
        except training.TrainingError as exc:
            _first_start_skip(spec, context, f"the training window cannot be trained on ({exc})")
            raise
    log.info("model %s: window [%s, %s) holds %d training and %d held-out labelled rows (from %s); "
             "parameters %s", spec.name, stats.window.start, stats.window.end, stats.train_rows, stats.holdout_rows,
             spec.source.table, json.dumps(params, sort_keys=True))
    return stats.as_dict()


def train(spec: ModelSpec, window: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Fit, log to MLflow and register a new version (not yet promoted)."""
    from scoring import training

    end = dt.date.fromisoformat(window["end"])
    with serving_db_connection() as conn:
        data = training.load_training_data(conn, spec, end)
    candidate = training.train_and_log(spec, data, overrides=overrides(context), airflow_run_id=context["run_id"])
    return {"version": candidate.version, "run_id": candidate.run_id, "metric": candidate.metric,
            "baseline": candidate.baseline, "end": window["end"]}


def gate(spec: ModelSpec, candidate: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one gate (airflow_tasks.gate_tasks, as evaluate_<model> runs it) on the version just trained, on the
    held-out part of the window it was trained on; a promotion publishes `promotion_asset(spec)`."""
    return gate_tasks.gate(spec, str(candidate["version"]), dt.date.fromisoformat(candidate["end"]), context)
