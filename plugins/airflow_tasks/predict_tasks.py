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
from airflow_tasks.training_tasks import run_kind
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
    """conf `date`; for a run triggered by a promotion, the latest predicted date (the day lookups serve, which
    the new champion's predictions replace; today when nothing was predicted yet); else the run's date."""
    day = conf_date(context["params"].get("date"), "date")
    if day is not None:
        return day
    if run_kind(context) == "asset_triggered":
        with serving_db_connection() as conn:
            row = conn.execute("SELECT max(prediction_date) FROM ops.batch_runs WHERE model_name = %s "
                               "AND status = 'success'", (context["dag"].dag_id.removeprefix("predict_"),)).fetchone()
        if row and row[0]:
            return row[0]
    return run_date(context)


def _skip_without_champion(spec: ModelSpec, context: Mapping[str, Any], why: str = "") -> None:
    """A scheduled or promotion-triggered run of a model that has no champion yet ends skipped with the reason
    (a fresh platform: nothing to score with yet), never failed. A manual run still fails, saying so."""
    from airflow.sdk.exceptions import AirflowSkipException

    from scoring.registry import CHAMPION, AliasNotFoundError, resolve_version

    if run_kind(context) not in ("scheduled", "asset_triggered") or model_ref(context) != CHAMPION:
        return
    try:
        resolve_version(spec.name, CHAMPION)
    except AliasNotFoundError as exc:
        raise AirflowSkipException(f"model '{spec.name}' has no champion yet (train_{spec.name} promotes one; "
                                   f"its promotion re-triggers this DAG): skipped, not failed{why}") from exc


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

    _skip_without_champion(spec, context)
    day = prediction_date(context)
    with serving_db_connection() as conn:
        batch.check_features(conn, spec, day)
    log.info("model %s: features for %s present in %s", spec.name, day, spec.source.table)
    return day.isoformat()


def resolve_version(spec: ModelSpec, context: Mapping[str, Any]) -> str:
    """The version the whole run scores with, resolved once (a moving alias cannot split a run), and approved by
    the promotion gate: the one rule of every path (scoring.registry.resolve_approved; SERVING_ALLOW_UNGATED
    overrides). An unreachable MLflow is retried; a missing alias or version, or a refused one, fails at once."""
    from airflow.sdk.exceptions import AirflowFailException

    from scoring.registry import AliasNotFoundError, RegistryError, RegistryUnavailableError, resolve_approved

    ref = model_ref(context)
    try:
        resolved = resolve_approved(spec.name, ref)
    except RegistryUnavailableError:
        raise  # worth the task's retries: MLflow may be back in a moment
    except AliasNotFoundError as exc:
        _skip_without_champion(spec, context, " (the alias went away during the run)")
        raise AirflowFailException(str(exc)) from exc  # a missing alias stays missing: fail now, no retries
    except RegistryError as exc:  # no such version, or one the gate did not promote: the same on a retry
        raise AirflowFailException(str(exc)) from exc
    (log.warning if resolved.ungated else log.info)("model %s: %s", spec.name, resolved.describe())
    return resolved.version


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


def swap(spec: ModelSpec, plan: dict[str, Any], shard_results: list[dict[str, Any]],
         context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from scoring import batch

    run = batch.BatchPlan.from_dict(plan)
    log.info("model %s: shards finished: %s", spec.name, list(shard_results))
    with serving_db_connection() as conn:
        result = batch.swap_or_fail(conn, spec, run)
    if context is not None:  # the monitor DAG reads which date was swapped in from the Asset event
        context["outlet_events"][prediction_asset(spec)].extra = {"date": run.day, "version": run.version}
    return {"date": run.day, "version": run.version, "rows_scored": result.rows_scored,
            "rows_rejected": result.rows_rejected, "table": spec.prediction_table}


def score_challenger(spec: ModelSpec, day: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """Score the day with the version aliased `challenger` into the shadow table (skipped when there is none).
    Never in the champion's way: a failure is logged and ends this task skipped with the reason."""
    from airflow.sdk.exceptions import AirflowSkipException

    from scoring.monitoring.shadow import score_shadow, shadow_table
    from scoring.registry import CHALLENGER, RegistryError, resolve_version
    from scoring.scorer import Scorer

    try:
        version = resolve_version(spec.name, CHALLENGER)
    except RegistryError as exc:
        raise AirflowSkipException(f"model '{spec.name}': no challenger to score in shadow ({exc})") from exc
    try:
        scorer = Scorer.from_registry(spec, version)
        with serving_db_connection() as conn, serving_db_connection() as read_conn:
            result = score_shadow(conn, read_conn, spec, dt.date.fromisoformat(day), f"{context['run_id']}__shadow",
                                  scorer)
    except Exception as exc:
        log.warning("model %s: challenger version %s could not be scored in shadow: %s", spec.name, version, exc)
        raise AirflowSkipException(f"challenger version {version} not scored: {type(exc).__name__}: {exc}") from exc
    log.info("model %s: challenger version %s scored %d rows of %s into %s", spec.name, version,
             result.rows_scored, day, shadow_table(spec))
    return {"version": version, "rows_scored": result.rows_scored, "table": shadow_table(spec)}


def drop_expired(spec: ModelSpec, day: str) -> list[str]:
    from scoring import batch

    with serving_db_connection() as conn:
        return batch.drop_expired(conn, spec, dt.date.fromisoformat(day))
