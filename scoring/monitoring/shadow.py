"""The challenger in shadow: the nightly run also scores the version aliased `challenger` into
`<prediction table>_shadow` (same columns, partitioned by date, never served). The monitor compares it with the
champion's predictions of the same day, so that a promotion can be decided on evidence:

  challenger.version, challenger.rows      which version, how many rows both scored
  challenger.agreement                     share of rows with the same class (classifier, at 0.5) or within 10%
                                           of the champion's value (regressor); see checks.score_agreement
  challenger.mean_abs_diff                 mean |challenger score - champion score|
  challenger.realised_<metric>             its realised metric once labels are in
  challenger.metric_gain                   challenger's realised metric minus the champion's, signed so that a
                                           positive value means the challenger did better
All are figures (status info): evidence for a person deciding, not alerts.

Online, the async worker scores the payload log's sampled live rows with the challenger (serving/shadow.py) and
writes its answers beside the champion's (ops.online_payloads, route 'shadow'); the monitor pairs them:

  online.challenger.version, .rows         which version, how many logged live rows it scored
  online.challenger.agreement              as challenger.agreement, on live traffic
  online.challenger.mean_abs_diff          mean |challenger score - served score| on live traffic
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from scoring.monitoring import collect
from scoring.monitoring.checks import CheckResult, judge
from scoring.monitoring.metrics import defined, metric_value
from scoring.spec import ModelSpec
from scoring.store import split_table

if TYPE_CHECKING:
    from scoring.batch import RunResult
    from scoring.scorer import Scorer

AGREEMENT_TOLERANCE = 0.1  # regressors: relative difference still counted as agreement


def shadow_table(spec: ModelSpec) -> str:
    """predictions.churn -> predictions.churn_shadow"""
    return f"{spec.prediction_table}_shadow"


def ensure_shadow_table(conn: psycopg.Connection, spec: ModelSpec) -> None:
    """The shadow table, shaped like the prediction table (so the batch steps can stage and swap into it too)."""
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {shadow} (LIKE {parent} INCLUDING DEFAULTS, "
                         "PRIMARY KEY (prediction_date, {key})) PARTITION BY LIST (prediction_date)").format(
        shadow=sql.Identifier(*split_table(shadow_table(spec))),
        parent=sql.Identifier(*split_table(spec.prediction_table)), key=sql.Identifier(spec.source.entity_key)))


def shadow_spec(spec: ModelSpec) -> ModelSpec:
    """The spec the batch steps run with for the shadow: its own table and its own name in ops.batch_runs
    (`<model>_shadow`), so a shadow run never counts as the day's served run; one shard; no reasons."""
    return dataclasses.replace(spec, name=f"{spec.name}_shadow", prediction_table=shadow_table(spec),
                               batch=dataclasses.replace(spec.batch, shards=1, explain=None))


def score_shadow(conn: psycopg.Connection, read_conn: psycopg.Connection, spec: ModelSpec, day: dt.date,
                 run_id: str, scorer: Scorer) -> RunResult:
    """Score `day` with the challenger's `scorer` into the shadow table: the batch path's own steps (staging
    table, COPY, atomic swap of the day's partition), recorded as model `<model>_shadow` in ops.batch_runs."""
    from scoring import batch

    shadow = shadow_spec(spec)
    batch.check_features(conn, spec, day)
    with conn.transaction():
        ensure_shadow_table(conn, spec)
    plan = batch.prepare(conn, shadow, day, run_id, scorer.version, 1)
    try:
        batch.score_shard(read_conn, conn, scorer, plan, 0)
    except Exception as exc:
        conn.rollback()
        batch.fail_run(conn, plan, f"{type(exc).__name__}: {exc}")
        raise
    return batch.swap_or_fail(conn, shadow, plan)


def _exists(conn: psycopg.Connection, qualified: str) -> bool:
    found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,)).fetchone()[0]
    conn.commit()
    return bool(found)


def challenger_checks(conn: psycopg.Connection, spec: ModelSpec, day: dt.date) -> list[CheckResult]:
    """Champion against challenger on `day`; no checks when no challenger scored that day."""
    shadow = shadow_table(spec)
    if not _exists(conn, shadow):
        return []
    key = sql.Identifier(spec.source.entity_key)
    if spec.is_classifier:
        agree = sql.SQL("avg(((c.score > 0.5) = (p.score > 0.5))::int)")
    else:
        agree = sql.SQL("avg((abs(c.score - p.score) <= {} * greatest(abs(p.score), 1e-9))::int)").format(
            sql.Literal(AGREEMENT_TOLERANCE))
    row = conn.execute(sql.SQL(
        "SELECT count(*), {agree}, avg(abs(c.score - p.score)), max(c.model_version) FROM {shadow} c "
        "JOIN {pred} p ON p.prediction_date = c.prediction_date AND p.{key} = c.{key} "
        "WHERE c.prediction_date = %s").format(
        agree=agree, shadow=sql.Identifier(*split_table(shadow)),
        pred=sql.Identifier(*split_table(spec.prediction_table)), key=key), (day,)).fetchone()
    conn.commit()
    rows, agreement, mad, version = row
    if not rows:
        return []
    out = [judge("challenger.version", float(version), None), judge("challenger.rows", float(rows), None),
           judge("challenger.agreement", float(agreement), None,
                 "same class" if spec.is_classifier else f"within {AGREEMENT_TOLERANCE:.0%} of the champion"),
           judge("challenger.mean_abs_diff", float(mad), None)]
    scores, labels = collect.scores_and_labels(conn, spec, shadow, day)
    champion_scores, champion_labels = collect.scores_and_labels(conn, spec, spec.prediction_table, day)
    if defined(spec.metric, labels) and defined(spec.metric, champion_labels):
        mine = metric_value(spec.metric, labels, scores)
        theirs = metric_value(spec.metric, champion_labels, champion_scores)
        gain = mine - theirs if spec.higher_is_better else theirs - mine
        out.append(judge(f"challenger.realised_{spec.metric}", mine, None, f"{len(labels)} labelled predictions"))
        out.append(judge("challenger.metric_gain", gain, None,
                         f"challenger {mine:.4f} against champion {theirs:.4f} ({spec.metric})"))
    return out


def online_challenger_checks(conn: psycopg.Connection, spec: ModelSpec, day: dt.date) -> list[CheckResult]:
    """The challenger's online shadow answers against what was served for the same logged rows on `day` (a pair:
    the same logged_at, request id and features); no checks when it scored none."""
    from scoring.rollout import SHADOW_ROUTE

    if spec.is_classifier:
        agree = sql.SQL("avg(((s.score > 0.5) = (p.score > 0.5))::int)")
    else:
        agree = sql.SQL("avg((abs(s.score - p.score) <= {} * greatest(abs(p.score), 1e-9))::int)").format(
            sql.Literal(AGREEMENT_TOLERANCE))
    row = conn.execute(sql.SQL(
        "SELECT count(*), {agree}, avg(abs(s.score - p.score)), max(s.model_version) "
        "FROM ops.online_payloads s JOIN ops.online_payloads p ON p.model_name = s.model_name "
        "AND p.log_date = s.log_date AND p.logged_at = s.logged_at AND p.route <> %s "
        "AND p.request_id IS NOT DISTINCT FROM s.request_id AND p.features = s.features "
        "WHERE s.model_name = %s AND s.log_date = %s AND s.route = %s").format(agree=agree),
        (SHADOW_ROUTE, spec.name, day, SHADOW_ROUTE)).fetchone()
    conn.commit()
    rows, agreement, mad, version = row
    if not rows:
        return []
    return [judge("online.challenger.version", float(version) if version is not None else None, None),
            judge("online.challenger.rows", float(rows), None, "logged live rows the challenger scored in shadow"),
            judge("online.challenger.agreement", float(agreement), None,
                  "same class as served" if spec.is_classifier else f"within {AGREEMENT_TOLERANCE:.0%} of served"),
            judge("online.challenger.mean_abs_diff", float(mad), None, "challenger score - served score, live")]
