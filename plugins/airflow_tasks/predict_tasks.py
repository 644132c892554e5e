"""The bodies of the `predict_<model>` DAG's tasks: Airflow context in, calls to `scoring.batch`, XCom-able
values out. Each step logs what it did, so the task log tells which date, version, rows and rejects.

`scoring.batch` (and with it MLflow/XGBoost) is imported inside the tasks so that DAG parsing stays fast.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, Param

from airflow_tasks.hooks import serving_db_connection
from airflow_tasks.run_dates import ConfError, conf_date, run_date
from scoring.spec import ModelSpec

log = logging.getLogger(__name__)


def prediction_asset(spec: ModelSpec) -> Asset:
    """The Asset the predict DAG updates when a date's predictions are swapped in; downstream DAGs (monitoring)
    schedule on it: `schedule=[prediction_asset(spec)]`."""
    schema, table = spec.prediction_table.split(".", 1)
    return Asset(name=spec.prediction_table, uri=f"x-serving-db://{schema}/{table}", group="predictions")


def predict_params() -> dict[str, Param]:
    """Run parameters of a predict DAG (checked when a run is triggered, and again by the tasks)."""
    return {
        "date": Param(None, type=["null", "string"], format="date",
                      description="Prediction date (YYYY-MM-DD) to score. Default: the run's logical date."),
        "model_version": Param(None, type=["null", "string"], pattern=r"^[0-9]+$",
                               description="Registered version to score with. Default: the 'champion' alias."),
    }


def prediction_date(context: Mapping[str, Any]) -> dt.date:
    return conf_date(context["params"].get("date"), "date") or run_date(context)


def model_ref(context: Mapping[str, Any]) -> str:
    from scoring.registry import CHAMPION

    value = context["params"].get("model_version")
    if value is None or value == "":
        return CHAMPION
    if not str(value).isdigit():
        raise ConfError(f"conf 'model_version': expected a version number such as \"3\", got {value!r}")
    return str(value)


def check_features(spec: ModelSpec, context: Mapping[str, Any]) -> str:
    """Fail (with which table and date) unless the date's feature partition exists and has rows."""
    from scoring import batch

    day = prediction_date(context)
    with serving_db_connection() as conn:
        batch.check_features(conn, spec, day)
    log.info("model %s: features for %s present in %s", spec.name, day, spec.source.table)
    return day.isoformat()


def resolve_version(spec: ModelSpec, context: Mapping[str, Any]) -> str:
    """The version the whole run scores with, resolved once (a moving alias cannot split a run)."""
    from airflow.sdk.exceptions import AirflowFailException

    from scoring.registry import RegistryError
    from scoring.registry import resolve_version as resolve

    ref = model_ref(context)
    try:
        version = resolve(spec.name, ref)
    except RegistryError as exc:
        if "unreachable" in str(exc):
            raise  # worth the task's retries: MLflow may be back in a moment
        raise AirflowFailException(str(exc)) from exc  # a missing alias stays missing: fail now, no retries
    log.info("model %s: '%s' resolves to version %s", spec.name, ref, version)
    return version


def prepare(spec: ModelSpec, day: str, version: str, context: Mapping[str, Any]) -> dict[str, Any]:
    from scoring import batch

    with serving_db_connection() as conn:
        plan = batch.prepare(conn, spec, dt.date.fromisoformat(day), context["run_id"], version)
    log.info("model %s: run %s prepared: %s", spec.name, context["run_id"], plan)
    return plan.to_dict()


def score_shard(spec: ModelSpec, plan: dict[str, Any], shard: int) -> dict[str, Any]:
    from scoring import batch
    from scoring.scorer import Scorer

    run = batch.BatchPlan.from_dict(plan)
    scorer = Scorer.from_registry(spec, run.version)
    with serving_db_connection() as read_conn, serving_db_connection() as write_conn:
        try:
            result = batch.score_shard(read_conn, write_conn, scorer, run, shard)
        except Exception as exc:
            write_conn.rollback()
            # Keep the staging table: a retry of this shard, or the other shards, may still complete the run.
            batch.fail_run(write_conn, run, f"shard {shard}: {type(exc).__name__}: {exc}", drop_staging=False)
            raise
    return {"shard": result.shard, "rows_scored": result.rows_scored, "rows_rejected": result.rows_rejected,
            "duration_s": round(result.duration_s, 3), "skipped": result.skipped}


def swap(spec: ModelSpec, plan: dict[str, Any], shard_results: list[dict[str, Any]]) -> dict[str, Any]:
    from scoring import batch

    run = batch.BatchPlan.from_dict(plan)
    log.info("model %s: shards finished: %s", spec.name, list(shard_results))
    with serving_db_connection() as conn:
        result = batch.swap_or_fail(conn, spec, run)
    return {"date": run.day, "version": run.version, "rows_scored": result.rows_scored,
            "rows_rejected": result.rows_rejected, "table": spec.prediction_table}


def drop_expired(spec: ModelSpec, day: str) -> list[str]:
    from scoring import batch

    with serving_db_connection() as conn:
        return batch.drop_expired(conn, spec, dt.date.fromisoformat(day))
