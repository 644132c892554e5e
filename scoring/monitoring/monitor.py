"""One monitored day of one model, start to end: gather (SQL), check, record (ops table), track (MLflow run with
metrics and the report). The monitor_<model> DAG's tasks call `monitor_day` and `raise_on_alerts`.

Checks of a day (names as in ops.monitoring_checks; limits from models.yaml `monitoring:`):
  rows, reject_rate, row_count_change                      the day's batch run against the previous day's
  psi.<feature>, null_rate.<feature>, null_rate_increase.<feature>   each feature against the training window
  score_psi.holdout, score_psi.previous_day, score_mean    the score distribution
  realised_<metric>, metric_degradation                    once labels are in (this day and up to
                                                           label_lookback_days earlier days still without one)
  challenger.*                                             champion against the challenger in shadow
  online.rows, online.psi.<feature>,                       the day's logged live traffic (ops.online_payloads)
  online.null_rate_increase.<feature>, online.score_psi.holdout   against the training window, judged once
                                                           the day has online_min_rows logged rows
  attribution.<feature>, attribution_mean_abs.<feature>    each feature's mean |contribution| (its influence on
                                                           the scores) against the training window's
  online.challenger.*                                      the challenger's online shadow against what was served
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from scoring.monitoring import attribution, collect
from scoring.monitoring.checks import CheckResult, alerts, degradation, histogram_psi, judge, relative_change, worst
from scoring.monitoring.metrics import defined, metric_value
from scoring.monitoring.profile import ReferenceProfile
from scoring.monitoring.report import ReportData, write_report
from scoring.scorer import Scorer
from scoring.spec import ModelSpec

log = logging.getLogger(__name__)

REPORT_DIR = "report"


class MonitorError(RuntimeError):
    """The day cannot be monitored (no successful batch run for it); the message says why."""


class AlertError(RuntimeError):
    """At least one check crossed its alert threshold; the message lists which and by how much."""


@dataclass
class MonitorResult:
    model: str
    day: dt.date
    version: int | None
    checks: list[CheckResult]
    earlier: dict[dt.date, list[CheckResult]] = field(default_factory=dict)  # realised metrics of earlier days
    report: ReportData | None = None
    mlflow_run_id: str | None = None
    report_url: str | None = None

    @property
    def status(self) -> str:
        return worst([*self.checks, *(c for cs in self.earlier.values() for c in cs)])

    def alerts(self) -> list[str]:
        found = [r.describe() for r in alerts(self.checks)]
        found += [f"{r.describe()} (predictions of {day})" for day, cs in sorted(self.earlier.items())
                  for r in alerts(cs)]
        return found

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "date": self.day.isoformat(), "version": self.version, "status": self.status,
                "alerts": self.alerts(), "warnings": [r.describe() for r in self.checks if r.status == "warn"],
                "checks": {r.check: r.value for r in self.checks}, "mlflow_run_id": self.mlflow_run_id,
                "report_url": self.report_url}


# -- gathering and checking -----------------------------------------------------------------------------------


def _realised(conn: psycopg.Connection, spec: ModelSpec, day: dt.date, holdout: float | None
              ) -> list[CheckResult]:
    """The realised metric of what was predicted on `day` (if its labels have arrived) and its degradation."""
    scores, labels = collect.scores_and_labels(conn, spec, spec.prediction_table, day)
    if not defined(spec.metric, labels):
        return []
    value = metric_value(spec.metric, labels, scores)
    out = [judge(f"realised_{spec.metric}", value, None, f"{len(labels)} labelled predictions")]
    if holdout is not None:
        out.append(judge("metric_degradation", degradation(holdout, value, spec.higher_is_better),
                         spec.monitoring.metric_degradation,
                         f"realised {spec.metric} {value:.4f} against held-out {holdout:.4f}"))
    return out


def gather_checks(conn: psycopg.Connection, spec: ModelSpec, day: dt.date, reference: ReferenceProfile | None,
                  run: collect.DayRun, scorer: Scorer | None = None) -> tuple[list[CheckResult], ReportData]:
    """Every check of the day (the realised metric of earlier days aside) and the report's data."""
    limits = spec.monitoring
    checks: list[CheckResult] = [judge("rows", run.rows_in, None, f"{run.rows_scored} scored"),
                                 judge("reject_rate", run.reject_rate, limits.reject_rate,
                                       f"{run.rows_rejected} of {run.rows_in} rows rejected")]
    previous = collect.previous_run(conn, spec.name, day)
    if previous is not None:
        checks.append(judge("row_count_change", relative_change(run.rows_in, previous.rows_in),
                            limits.row_count_change,
                            f"{run.rows_in} rows against {previous.rows_in} on {previous.day}"))
    report = ReportData(spec.name, day, run.version, checks, {}, metric=spec.metric)
    if reference is None:
        report.notes.append(f"version {run.version} has no reference profile (trained before profiles were "
                            "kept): feature drift and the score shift against the held-out window are not checked")
        checks.append(CheckResult("reference_profile", None, "warn", 0.0, None,
                                  f"version {run.version} has no reference profile"))
        return checks, report

    today = collect.feature_histograms(conn, spec, day, reference)
    for name, hist in today.items():
        ref = reference.features[name]
        report.features[name] = (ref, hist)
        checks.append(judge(f"psi.{name}", histogram_psi(ref, hist), limits.feature_psi,
                            f"{hist.non_null} values"))
        checks.append(judge(f"null_rate.{name}", hist.null_rate, None, f"{hist.nulls} missing"))
        checks.append(judge(f"null_rate_increase.{name}", hist.null_rate - ref.null_rate, limits.null_rate_increase,
                            f"{hist.null_rate:.2%} today, {ref.null_rate:.2%} in the training window"))

    if scorer is not None:
        report.attribution = attribution.measure(conn, scorer, day, reference.window)
        checks += attribution.attribution_checks(spec, report.attribution)

    edges = reference.score.bins
    scores = collect.score_summary(conn, spec.prediction_table, day, edges)
    if scores is not None:
        report.score_reference, report.score_today = reference.score, scores.histogram
        checks.append(judge("score_mean", scores.mean, None, f"held-out mean {reference.score_mean:.4g}"))
        checks.append(judge("score_psi.holdout", histogram_psi(reference.score, scores.histogram), limits.score_psi,
                            "today's scores against the held-out scores at training time"))
        before = collect.score_summary(conn, spec.prediction_table, previous.day, edges) if previous else None
        if before is not None:
            report.score_previous = before.histogram
            checks.append(judge("score_psi.previous_day", histogram_psi(before.histogram, scores.histogram),
                                limits.score_psi_day, f"against {previous.day}"))
    report.holdout_metric = reference.holdout_metric
    checks += online_checks(conn, spec, day, reference, run.version, report)
    from scoring.monitoring.shadow import online_challenger_checks  # shadow.py builds on this package

    checks += online_challenger_checks(conn, spec, day)
    return checks, report


def online_checks(conn: psycopg.Connection, spec: ModelSpec, day: dt.date, reference: ReferenceProfile,
                  version: int, report: ReportData) -> list[CheckResult]:
    """The day's sampled live traffic (serving/payload_log.py) against the training window: the same drift
    checks as the batch day's, prefixed `online.`; reported but not judged below online_min_rows rows."""
    limits = spec.monitoring
    today = collect.online_feature_histograms(conn, spec, day, reference)
    rows = max((hist.rows for hist in today.values()), default=0)
    if rows < limits.online_min_rows:
        if rows:
            report.notes.append(f"online traffic: {rows} logged rows on {day}, fewer than online_min_rows "
                                f"({limits.online_min_rows}): not judged")
        return [judge("online.rows", rows, None, f"logged live rows; below online_min_rows "
                                                 f"({limits.online_min_rows}): drift not judged")]
    out = [judge("online.rows", rows, None, "logged live rows (ops.online_payloads)")]
    for name, hist in today.items():
        ref = reference.features[name]
        out.append(judge(f"online.psi.{name}", histogram_psi(ref, hist), limits.feature_psi,
                         f"{hist.non_null} logged live values"))
        out.append(judge(f"online.null_rate_increase.{name}", hist.null_rate - ref.null_rate,
                         limits.null_rate_increase,
                         f"{hist.null_rate:.2%} online, {ref.null_rate:.2%} in the training window"))
    scores = collect.online_score_summary(conn, spec.name, day, version, reference.score.bins)
    if scores is not None:
        out.append(judge("online.score_psi.holdout", histogram_psi(reference.score, scores.histogram),
                         limits.score_psi, f"{scores.rows} live scores of version {version} against the held-out "
                                           "scores at training time"))
    report.notes.append(f"online traffic: {rows} logged live rows on {day}; their checks are prefixed 'online.'")
    return out


def _references(loader):
    cache: dict[int, ReferenceProfile | None] = {}

    def get(version: int) -> ReferenceProfile | None:
        if version not in cache:
            cache[version] = loader(version)
        return cache[version]
    return get


def monitor_day(conn: psycopg.Connection, spec: ModelSpec, day: dt.date, run_id: str, *,
                reference_loader=None, track: bool = True, extra_checks=None, scorer_loader=None) -> MonitorResult:
    """Monitor `day`: checks, ops rows, and (track=True) the MLflow run with metrics and the report.

    `reference_loader(version)` gives a version's ReferenceProfile (default: from MLflow); `extra_checks(conn,
    spec, day)` adds checks (the challenger comparison); `scorer_loader(version)` the day's Scorer for the
    attribution drift (default: from the registry; a loader returning None skips it)."""
    from scoring.monitoring.profile import load_reference

    started = time.perf_counter()
    run = collect.day_run(conn, spec.name, day)
    if run is None:
        raise MonitorError(f"model '{spec.name}': no successful batch run for {day} in ops.batch_runs; "
                           f"nothing to monitor (run predict_{spec.name} for that date first)")
    reference_of = _references(reference_loader or (lambda v: load_reference(spec.name, v)))
    reference = reference_of(run.version)
    load_scorer = scorer_loader or (lambda v: Scorer.from_registry(spec, v))
    scorer = load_scorer(run.version) if reference is not None and run.version is not None else None
    checks, report = gather_checks(conn, spec, day, reference, run, scorer)
    checks += _realised(conn, spec, day, reference.holdout_metric if reference else None)
    if extra_checks is not None:
        checks += extra_checks(conn, spec, day)

    # Earlier days whose labels arrived since they were monitored get their realised metric now.
    earlier: dict[dt.date, list[CheckResult]] = {}
    lookback = spec.monitoring.label_lookback_days
    if lookback:
        done = recorded_days(conn, spec, f"realised_{spec.metric}", day - dt.timedelta(days=lookback), day)
        for past in collect.predicted_days(conn, spec.name, day - dt.timedelta(days=lookback),
                                           day - dt.timedelta(days=1)):
            if past in done:
                continue
            past_run = collect.day_run(conn, spec.name, past)
            ref = reference_of(past_run.version) if past_run else None
            found = _realised(conn, spec, past, ref.holdout_metric if ref else None)
            if found:
                earlier[past] = found
    result = MonitorResult(spec.name, day, run.version, checks, earlier, report)
    store_checks(conn, spec, result, run_id)
    report.metric_history = metric_history(conn, spec, day)
    report.checks = checks
    checked = time.perf_counter()
    if track:
        track_in_mlflow(spec, result, run_id)
    log.info("monitor %s %s (version %s): %s; %d checks in %.1fs, MLflow run + report in %.1fs; alerts: %s",
             spec.name, day, run.version, result.status, len(checks), checked - started,
             time.perf_counter() - checked, result.alerts() or "none")
    return result


def raise_on_alerts(result: MonitorResult) -> None:
    found = result.alerts()
    if found:
        raise AlertError(f"model '{result.model}' on {result.day}: {len(found)} check(s) crossed the alert "
                         f"threshold: " + "; ".join(found)
                         + (f". Report: {result.report_url}" if result.report_url else ""))


# -- the ops table --------------------------------------------------------------------------------------------


def _row(spec: ModelSpec, day: dt.date, check: CheckResult, version: int | None, run_id: str) -> tuple:
    return (spec.name, day, check.check, check.value, check.threshold, check.alert, check.status, check.detail,
            version, run_id)


_UPSERT = ("INSERT INTO ops.monitoring_checks (model_name, monitor_date, check_name, value, threshold, "
           "alert_threshold, status, detail, model_version, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
           "ON CONFLICT (model_name, monitor_date, check_name) DO UPDATE SET value = EXCLUDED.value, "
           "threshold = EXCLUDED.threshold, alert_threshold = EXCLUDED.alert_threshold, status = EXCLUDED.status, "
           "detail = EXCLUDED.detail, model_version = EXCLUDED.model_version, run_id = EXCLUDED.run_id, "
           "computed_at = now()")


def store_checks(conn: psycopg.Connection, spec: ModelSpec, result: MonitorResult, run_id: str) -> None:
    """The day's rows replace the day's earlier rows in one transaction; earlier days' realised rows are upserted."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("DELETE FROM ops.monitoring_checks WHERE model_name = %s AND monitor_date = %s",
                    (spec.name, result.day))
        rows = [_row(spec, result.day, c, result.version, run_id) for c in result.checks]
        for past, checks in result.earlier.items():
            rows += [_row(spec, past, c, None, run_id) for c in checks]
        cur.executemany(_UPSERT, rows)


def recorded_days(conn: psycopg.Connection, spec: ModelSpec, check: str, start: dt.date, end: dt.date) -> set[dt.date]:
    rows = conn.execute("SELECT monitor_date FROM ops.monitoring_checks WHERE model_name = %s AND check_name = %s "
                        "AND monitor_date BETWEEN %s AND %s", (spec.name, check, start, end)).fetchall()
    conn.commit()
    return {r[0] for r in rows}


def metric_history(conn: psycopg.Connection, spec: ModelSpec, until: dt.date, days: int = 90
                   ) -> list[tuple[dt.date, float]]:
    rows = conn.execute("SELECT monitor_date, value FROM ops.monitoring_checks WHERE model_name = %s "
                        "AND check_name = %s AND value IS NOT NULL AND monitor_date BETWEEN %s AND %s ORDER BY 1",
                        (spec.name, f"realised_{spec.metric}", until - dt.timedelta(days=days), until)).fetchall()
    conn.commit()
    return [(d, float(v)) for d, v in rows]


# -- MLflow ---------------------------------------------------------------------------------------------------


def experiment_name(spec: ModelSpec) -> str:
    return f"serving/{spec.name}-monitoring"


def _metric_key(check: str) -> str:
    return check.replace("[", "_").replace("]", "_")


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifacts"


def track_in_mlflow(spec: ModelSpec, result: MonitorResult, airflow_run_id: str) -> None:
    """One MLflow run per (model, day) in the model's monitoring experiment (a re-run of the day reuses it):
    every check value as a metric (timestamped at the day, so MLflow's charts show the history), the checks
    as JSON and the report (index.html + PNGs) as artifacts."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    experiment = mlflow.set_experiment(experiment_name(spec))
    mc = MlflowClient()
    found = mc.search_runs([experiment.experiment_id], f"tags.monitor_date = '{result.day}'", max_results=1)
    day_ms = int(dt.datetime.combine(result.day, dt.time(), tzinfo=dt.UTC).timestamp() * 1000)
    step = (result.day - dt.date(2020, 1, 1)).days  # days since an epoch: a chart over steps is a time axis
    metrics = {_metric_key(c.check): c.value for c in result.checks if c.value is not None and math.isfinite(c.value)}
    with mlflow.start_run(run_id=found[0].info.run_id if found else None,
                          run_name=f"monitor_{spec.name}_{result.day}") as run:
        mlflow.set_tags({"model": spec.name, "monitor_date": str(result.day), "model_version": str(result.version),
                         "status": result.status, "alerts": str(len(result.alerts())),
                         "airflow_run_id": airflow_run_id})
        # one request for all metrics (a call per metric costs a round trip each)
        mc.log_batch(run.info.run_id, metrics=[Metric(k, v, day_ms, step) for k, v in metrics.items()])
        mlflow.log_text(json.dumps(result.summary(), indent=2, default=str), "checks.json")
        if result.report is not None:
            with tempfile.TemporaryDirectory() as tmp:
                write_report(result.report, Path(tmp) / REPORT_DIR)
                mlflow.log_artifacts(str(Path(tmp) / REPORT_DIR), REPORT_DIR)
    result.mlflow_run_id = run.info.run_id
    result.report_url = run_url(mlflow.get_tracking_uri(), experiment.experiment_id, run.info.run_id)
