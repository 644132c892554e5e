"""Training: labelled history -> XGBoost model -> MLflow run and registered version -> promotion gate.

Three steps, so that Airflow can run (and retry) each on its own; `train_and_register` runs all three:
  1. `check_window`: cheap counts of the labelled rows in the window; a clear TrainingError when too few.
  2. `train_and_log`: fit on the window, log params/metrics/model (xgboost flavour, signature, input example) to
     MLflow and register a new version, tagged `gate.decision=pending`.
  3. `run_gate`: promote the version to the `champion` alias only if
     (a) its metric on the held-out window is at least as good as the current champion's on the same rows
         (the first version must beat a trivial baseline instead), and
     (b) for online models, its single-row p99 latency through the shared scorer is inside the spec's budget
         (timed as the scoring thread's CPU time: what the version costs a request, not what a busy neighbour
         on the training worker costs it).
     Every decision and its figures are written as tags on the version and logged; a refused version stays
     registered without the alias.

The model is trained on the *encoded* matrix (category codes, float), on purpose: the logged MLflow model then
takes exactly the numeric matrix the shared scorer builds, so MLflow's own predictions equal the scorer's.
"""

from __future__ import annotations

import datetime as dt
import gc
import io
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import psycopg
import xgboost as xgb
from psycopg import sql

from scoring.model_matrix import model_matrix, model_signature
from scoring.monitoring import metrics
from scoring.monitoring.profile import build_reference, log_reference
from scoring.registry import CHALLENGER, CHAMPION, AliasNotFoundError, client, load_booster, resolve_version
from scoring.scorer import ModelMismatchError, Scorer, explain_gate_tags
from scoring.spec import ModelSpec, validate_xgboost_params

log = logging.getLogger(__name__)

DEFAULT_FIT_PARAMS: dict[str, Any] = {"random_state": 42, "n_jobs": 2}
LATENCY_SAMPLES = 300  # single-row calls timed per round for the p99 (3 land above it)
LATENCY_ROUNDS = 3
LATENCY_WARMUP = 50


class TrainingError(RuntimeError):
    """Training cannot proceed (no or too little labelled data in the window, a single class, bad overrides)."""


@dataclass(frozen=True)
class Window:
    """The training window [start, end); its last `holdout_days` (from holdout_start) are held out."""

    start: dt.date
    holdout_start: dt.date
    end: dt.date

    @classmethod
    def ending(cls, spec: ModelSpec, end: dt.date) -> Window:
        return cls(end - dt.timedelta(days=spec.training.history_days),
                   end - dt.timedelta(days=spec.training.holdout_days), end)

    def __str__(self) -> str:
        return f"[{self.start}, {self.end}) with holdout from {self.holdout_start}"


@dataclass
class WindowStats:
    window: Window
    train_rows: int
    holdout_rows: int

    def as_dict(self) -> dict[str, Any]:
        return {"start": str(self.window.start), "holdout_start": str(self.window.holdout_start),
                "end": str(self.window.end), "train_rows": self.train_rows, "holdout_rows": self.holdout_rows}


@dataclass
class TrainingData:
    train: pd.DataFrame  # encoded features (float64, spec order) + label column
    holdout: pd.DataFrame
    window: Window
    rows_dropped: int = 0  # labelled rows the encoder rejected (invalid features)
    holdout_records: list[dict[str, Any]] = field(default_factory=list)  # raw rows, as a JSON client sends them
    window_rows: pd.DataFrame | None = None  # the raw feature rows of the whole window (the reference profile)


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    champion_version: str | None = None  # the champion the candidate was compared with
    # Refused only for being worse than the champion (latency budget and baseline passed): worth scoring in
    # shadow as the `challenger`, so that promotion can later be decided on realised evidence.
    challenger: bool = False

    def tags(self) -> dict[str, str]:
        tags = {"gate.decision": "promoted" if self.promoted else "refused", "gate.reason": self.reason,
                "gate.champion_version": self.champion_version or "none"}
        if self.challenger:
            tags["gate.challenger"] = "true"
        tags.update({f"gate.{k}": f"{v:.6g}" for k, v in self.figures.items()})
        return tags


@dataclass
class Candidate:
    """A trained, logged and registered (not yet gated) version."""

    version: str
    run_id: str
    metric: float  # the spec's metric on the held-out window, at training time
    baseline: float
    window: Window


@dataclass
class TrainingResult:
    version: str
    run_id: str
    metric: float
    decision: GateDecision


# -- data ------------------------------------------------------------------------------------------------------


def _window_query(spec: ModelSpec, start: dt.date, end: dt.date, columns: sql.Composable) -> sql.Composed:
    src = spec.source
    return sql.SQL("SELECT {cols} FROM {table} WHERE {date} >= {start} AND {date} < {end} AND {label} IS NOT NULL"
                   ).format(cols=columns, table=sql.Identifier(*src.table.split(".")),
                            date=sql.Identifier(src.date_column), label=sql.Identifier(spec.label),
                            start=sql.Literal(start), end=sql.Literal(end))


def check_window(conn: psycopg.Connection, spec: ModelSpec, end: dt.date) -> WindowStats:
    """Count the labelled rows of the window ending at `end` (exclusive); TrainingError if training cannot work."""
    window = Window.ending(spec, end)
    date = sql.Identifier(spec.source.date_column)
    counts = sql.SQL("count(*) FILTER (WHERE {d} < {h}), count(*) FILTER (WHERE {d} >= {h})").format(
        d=date, h=sql.Literal(window.holdout_start))
    with conn.cursor() as cur:
        cur.execute(_window_query(spec, window.start, window.end, counts))
        train_rows, holdout_rows = cur.fetchone()
    conn.commit()  # end the read transaction: the connection may be reused for a long time
    stats = WindowStats(window, int(train_rows), int(holdout_rows))
    total = stats.train_rows + stats.holdout_rows
    where = f"model '{spec.name}': window {window}"
    if total < spec.training.min_rows:
        raise TrainingError(f"{where}: only {total} labelled rows in {spec.source.table} "
                            f"(training.min_rows is {spec.training.min_rows}); load more feature history "
                            f"(e.g. the demo_features DAG) or pick another end_date")
    if stats.train_rows == 0:
        raise TrainingError(f"{where}: no labelled rows before {window.holdout_start} to train on "
                            f"({stats.holdout_rows} rows are all in the held-out part)")
    if stats.holdout_rows == 0:
        raise TrainingError(f"{where}: no labelled rows from {window.holdout_start} to hold out "
                            f"(the last {spec.training.holdout_days} days have no data; is end_date too late?)")
    return stats


def train_label_mean(conn: psycopg.Connection, spec: ModelSpec, window: Window) -> float:
    """The mean label of the window's training part: the trivial baseline's constant (see baseline_metric)."""
    with conn.cursor() as cur:
        cur.execute(_window_query(spec, window.start, window.holdout_start,
                                  sql.SQL("avg({})::float8").format(sql.Identifier(spec.label))))
        (mean,) = cur.fetchone()
    conn.commit()
    if mean is None:
        raise TrainingError(f"model '{spec.name}': no labelled rows before {window.holdout_start} in window {window}")
    return float(mean)


def _read_frame(conn: psycopg.Connection, query: sql.Composed, columns: list[str],
                text_columns: list[str]) -> pd.DataFrame:
    """Stream a query out with COPY (much faster than fetching tuples) into a frame."""
    buf = io.BytesIO()
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query)) as copy:
        for block in copy:
            buf.write(block)
    conn.commit()  # end the read transaction
    if buf.tell() == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c in text_columns else float) for c in columns})
    buf.seek(0)
    # Category values are read as text, never guessed as numbers, and only an empty field is NULL (so values
    # such as "NA" or "null" stay strings); numeric columns are parsed by pandas (NULL -> NaN).
    return pd.read_csv(buf, names=columns, header=None, keep_default_na=False, na_values=[""],
                       dtype={c: object for c in text_columns})


_HOLDOUT = "is_holdout"


def load_window(conn: psycopg.Connection, spec: ModelSpec, window: Window, *,
                holdout_only: bool = False) -> pd.DataFrame:
    """Raw labelled rows of the window: the features, the label and `is_holdout` (bool)."""
    date = sql.Identifier(spec.source.date_column)
    holdout = sql.Literal(window.holdout_start)
    columns = sql.SQL(", ").join([*map(sql.Identifier, [*spec.feature_names, spec.label]),
                                  sql.SQL("({} >= {})::int").format(date, holdout)])
    start = window.holdout_start if holdout_only else window.start
    names = [*spec.feature_names, spec.label, _HOLDOUT]
    text = [f.name for f in spec.features if f.type == "category"]
    frame = _read_frame(conn, _window_query(spec, start, window.end, columns), names, text)
    frame[spec.label] = frame[spec.label].astype(float)
    frame[_HOLDOUT] = frame[_HOLDOUT].astype(bool)
    return frame


def _encode_part(spec: ModelSpec, raw: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    matrix = model_matrix(spec, raw)
    data = matrix.features
    data[spec.label] = raw[spec.label].to_numpy()[matrix.valid]
    return data, matrix.n_rejected


def _records(spec: ModelSpec, raw: pd.DataFrame, n: int = 50) -> list[dict[str, Any]]:
    """Up to n raw rows as JSON-like records (None for missing values)."""
    sample = raw[spec.feature_names].head(n).astype(object)
    return sample.where(sample.notna(), None).to_dict("records")


def load_training_data(conn: psycopg.Connection, spec: ModelSpec, end: dt.date) -> TrainingData:
    """Labelled rows with date in [end - history_days, end); the last holdout_days are held out."""
    window = check_window(conn, spec, end).window
    raw = load_window(conn, spec, window)
    is_holdout = raw[_HOLDOUT].to_numpy()
    train, dropped_train = _encode_part(spec, raw[~is_holdout])
    holdout, dropped_holdout = _encode_part(spec, raw[is_holdout])
    for part, rows in (("training", train), ("held-out", holdout)):
        if len(rows) == 0:
            raise TrainingError(f"model '{spec.name}': the {part} part of window {window} has no valid rows "
                                f"(every row was rejected by the feature checks)")
        if spec.is_classifier and rows[spec.label].nunique() < 2:
            raise TrainingError(f"model '{spec.name}': the {part} part of window {window} has only one class "
                                f"of '{spec.label}'; a classifier needs both")
    if dropped_train + dropped_holdout:
        log.warning("model %s: %d labelled rows with invalid features left out of training",
                    spec.name, dropped_train + dropped_holdout)
    return TrainingData(train, holdout, window, dropped_train + dropped_holdout,
                        holdout_records=_records(spec, raw[is_holdout]), window_rows=raw[spec.feature_names])


def load_holdout(conn: psycopg.Connection, spec: ModelSpec, end: dt.date) -> TrainingData:
    """Only the held-out part of the window (what the gate needs); `train` is empty."""
    window = Window.ending(spec, end)
    raw = load_window(conn, spec, window, holdout_only=True)
    holdout, dropped = _encode_part(spec, raw)
    if len(holdout) == 0:
        raise TrainingError(f"model '{spec.name}': no valid held-out rows in [{window.holdout_start}, {end})")
    empty = pd.DataFrame(columns=[*spec.feature_names, spec.label], dtype=float)
    return TrainingData(empty, holdout, window, dropped, holdout_records=_records(spec, raw))


# -- model and metrics -----------------------------------------------------------------------------------------


def fit_params(spec: ModelSpec, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The effective XGBoost parameters: fixed defaults < the spec < per-run overrides (validated)."""
    if overrides:
        try:
            validate_xgboost_params(overrides, where="xgboost_overrides")
        except ValueError as exc:
            raise TrainingError(f"model '{spec.name}': {exc}") from exc
    return {**DEFAULT_FIT_PARAMS, **spec.xgboost, **(overrides or {})}


def fit(spec: ModelSpec, train: pd.DataFrame, overrides: dict[str, Any] | None = None) -> xgb.XGBModel:
    params = fit_params(spec, overrides)
    model = xgb.XGBClassifier(**params) if spec.is_classifier else xgb.XGBRegressor(**params)
    model.fit(train[spec.feature_names], train[spec.label])
    return model


def metric_value(spec: ModelSpec, y_true: np.ndarray, scores: np.ndarray) -> float:
    """The spec's metric; `scores` are class-1 probabilities for classifiers and values for regressors."""
    return metrics.metric_value(spec.metric, y_true, scores)


def baseline_metric(spec: ModelSpec, train: pd.DataFrame, holdout: pd.DataFrame) -> float:
    """The trivial model: the training prior (classifier) or mean (regressor) for every row."""
    if spec.metric == "roc_auc":
        return 0.5  # a constant score ranks nothing
    constant = np.full(len(holdout), float(train[spec.label].mean()))
    return metric_value(spec, holdout[spec.label].to_numpy(), constant)


def better_or_equal(spec: ModelSpec, candidate: float, reference: float) -> bool:
    return candidate >= reference if spec.higher_is_better else candidate <= reference


def holdout_metric(scorer: Scorer, holdout: pd.DataFrame) -> float:
    """The metric of a version on the held-out rows, scored through the shared scorer (as serving would)."""
    spec = scorer.spec
    scores = scorer.predict_matrix(holdout[spec.feature_names].to_numpy(np.float32)).scores
    return metric_value(spec, holdout[spec.label].to_numpy(), scores)


def single_row_p99_ms(scorer: Scorer, records: list[dict[str, Any]], n: int = LATENCY_SAMPLES,
                      rounds: int = LATENCY_ROUNDS) -> float:
    """p99 of scoring one JSON-like record at a time through the shared scorer, validation included.

    `records` are raw rows (category strings, None for missing) as an online client sends them. Each call is
    timed as the calling thread's CPU time (the gate scores with one booster thread, so that is all the work):
    on a shared worker wall time measures the neighbours. In a compose deployment on one 2-core host, where
    both models train at once beside 18 other containers, churn measured 37.5 ms p99 on the wall clock against
    its 25 ms budget and was refused. The p99 is taken per round of `n` calls and the lowest round counts; the
    garbage collector is paused while timing so that a collection owed to earlier work is not charged to one call.
    """
    if not records:
        raise TrainingError(f"model '{scorer.spec.name}': no rows to measure latency with")
    for i in range(LATENCY_WARMUP):
        scorer.score([records[i % len(records)]])
    p99s, walls = [], []
    timings, wall = np.empty(n), np.empty(n)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for i in range(n):
                started, started_wall = time.thread_time(), time.perf_counter()
                scorer.score([records[i % len(records)]])
                timings[i] = (time.thread_time() - started) * 1000
                wall[i] = (time.perf_counter() - started_wall) * 1000
            p99s.append(float(np.percentile(timings, 99)))
            walls.append(float(np.percentile(wall, 99)))
    finally:
        if gc_was_enabled:
            gc.enable()
    log.info("model %s: single-row p99 per round, CPU ms %s (wall clock ms %s)", scorer.spec.name,
             ", ".join(f"{p:.2f}" for p in p99s), ", ".join(f"{p:.2f}" for p in walls))
    return min(p99s)


# -- the gate --------------------------------------------------------------------------------------------------


def decide(spec: ModelSpec, candidate: float, baseline: float, champion: tuple[str, float] | None,
           p99_ms: float | None) -> GateDecision:
    """The promotion decision from the figures. `champion` is (version, metric on the same rows) or None."""
    m = spec.metric
    figures: dict[str, float] = {f"candidate_{m}": candidate, f"baseline_{m}": baseline}
    if champion is not None:
        figures[f"champion_{m}"] = champion[1]
    problems: list[str] = []
    if p99_ms is not None:
        figures["p99_ms"] = p99_ms
        figures["budget_ms"] = spec.serving.latency_budget_ms
        if p99_ms > spec.serving.latency_budget_ms:
            problems.append(f"single-row p99 {p99_ms:.2f} ms is over the budget of "
                            f"{spec.serving.latency_budget_ms:g} ms")
    if champion is None:
        if not better_or_equal(spec, candidate, baseline) or candidate == baseline:
            problems.append(f"{m} {candidate:.4f} does not beat the trivial baseline {baseline:.4f}")
        passed = f"first version: {m} {candidate:.4f} beats the baseline {baseline:.4f}"
    else:
        if not better_or_equal(spec, candidate, champion[1]):
            problems.append(f"{m} {candidate:.4f} is worse than champion v{champion[0]} ({champion[1]:.4f}) "
                            f"on the same held-out window")
        passed = f"{m} {candidate:.4f} is at least as good as champion v{champion[0]} ({champion[1]:.4f})"
    champion_version = champion[0] if champion else None
    if problems:
        only_worse = champion is not None and len(problems) == 1 and "worse than champion" in problems[0]
        beats_baseline = better_or_equal(spec, candidate, baseline) and candidate != baseline
        return GateDecision(False, "; ".join(problems), figures, champion_version,
                            challenger=only_worse and beats_baseline)
    if p99_ms is not None:
        passed += f"; p99 {p99_ms:.2f} ms within {spec.serving.latency_budget_ms:g} ms"
    return GateDecision(True, passed, figures, champion_version)


def _alias(spec: ModelSpec, alias: str) -> str | None:
    try:
        return resolve_version(spec.name, alias)
    except AliasNotFoundError:
        return None


def _current_champion(spec: ModelSpec) -> str | None:
    return _alias(spec, CHAMPION)


def champion_metric(spec: ModelSpec, holdout: pd.DataFrame, exclude: str | None = None) -> tuple[str, float] | None:
    """The current champion's version and its metric on the same held-out rows; None if there is no champion
    (or it is `exclude`, or it was trained on other features than the spec lists now)."""
    version = _current_champion(spec)
    if version is None or version == exclude:
        return None
    try:
        champion = Scorer.from_booster(spec, load_booster(spec.name, version), version)
    except ModelMismatchError as exc:
        # The spec's features changed: the old champion cannot score today's rows, so only the baseline counts.
        log.warning("gate for %s: %s; comparing with the baseline instead", spec.name, exc)
        return None
    return version, holdout_metric(champion, holdout)


def tag_version(spec: ModelSpec, version: str, tags: dict[str, str]) -> None:
    mc = client()
    for key, value in tags.items():
        mc.set_model_version_tag(spec.name, version, key, value)


def run_gate(spec: ModelSpec, version: str, data: TrainingData, baseline: float) -> GateDecision:
    """Gate registered `version` on `data.holdout`; tag the version, move the alias if it passes, log it."""
    # One thread: a single row gains nothing from more, and on a busy host OpenMP hand-offs dominate its latency.
    candidate_scorer = Scorer.from_registry(spec, version, threads=1)  # what serving loads
    candidate = holdout_metric(candidate_scorer, data.holdout)
    previous = _current_champion(spec)
    if previous == version:  # a retried gate after the alias already moved
        decision = GateDecision(True, f"version {version} is already the champion",
                                {f"candidate_{spec.metric}": candidate}, version)
    else:
        p99 = single_row_p99_ms(candidate_scorer, data.holdout_records) if spec.serving.online else None
        champion = champion_metric(spec, data.holdout, exclude=version)
        decision = decide(spec, candidate, baseline, champion, p99)
        if champion is None and previous not in (None, version):  # a champion exists but takes other features
            decision.reason = decision.reason.replace(
                "first version:", f"champion v{previous} was trained on other features, so against the baseline:")
            decision.champion_version = previous
    explain = explain_gate_tags(candidate_scorer, data.holdout_records) if spec.serving.online else {}
    tag_version(spec, version, {**decision.tags(), **explain, "gate.holdout_rows": str(len(data.holdout)),
                                "gate.window": str(data.window)})
    mc = client()
    if decision.promoted:
        mc.set_registered_model_alias(spec.name, CHAMPION, version)
        if _alias(spec, CHALLENGER) == version:  # the challenger won: it no longer runs in shadow
            mc.delete_registered_model_alias(spec.name, CHALLENGER)
    elif decision.challenger:
        mc.set_registered_model_alias(spec.name, CHALLENGER, version)
    outcome = "PROMOTED to champion" if decision.promoted else "REFUSED" + (" (now the challenger, scored in "
                                                                           "shadow)" if decision.challenger else "")
    log.info("gate for model %s version %s: %s - %s; figures %s (champion before: %s)", spec.name, version,
             outcome, decision.reason,
             json.dumps({k: round(v, 6) for k, v in decision.figures.items()}), previous or "none")
    return decision


# -- training + logging ----------------------------------------------------------------------------------------


def pip_requirements() -> list[str]:
    """The logged model's requirements, pinned to what trained it. Given explicitly because MLflow's inference
    loads the model again in a subprocess (~5-10 s per training) and then also lists unrelated packages."""
    pins = []
    for dist in ("mlflow", "xgboost", "xgboost-cpu", "scikit-learn", "numpy", "pandas", "scipy"):
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # xgboost comes as `xgboost` or as `xgboost-cpu`
            continue
    return pins


def train_and_log(spec: ModelSpec, data: TrainingData, *, overrides: dict[str, Any] | None = None,
                  airflow_run_id: str | None = None) -> Candidate:
    """Fit on `data`, log the run to MLflow and register a new version (tagged gate.decision=pending)."""
    params = fit_params(spec, overrides)
    started = time.perf_counter()
    model = fit(spec, data.train, overrides)
    fit_seconds = time.perf_counter() - started
    x_holdout = data.holdout[spec.feature_names]
    y_holdout = data.holdout[spec.label].to_numpy()
    scores = model.predict_proba(x_holdout)[:, 1] if spec.is_classifier else model.predict(x_holdout)
    candidate = metric_value(spec, y_holdout, scores)
    baseline = baseline_metric(spec, data.train, data.holdout)
    profile = None
    if data.window_rows is not None:  # what the monitor compares each predicted day with
        profile = build_reference(spec, data.window_rows, scores, candidate, str(data.window))

    mlflow.set_experiment(f"serving/{spec.name}")
    example = data.train[spec.feature_names].dropna().head(5)  # an example without NaN keeps its JSON simple
    tags = {"model": spec.name, "features": ",".join(spec.feature_names), "training_window": str(data.window),
            "window_start": str(data.window.start), "window_end": str(data.window.end),
            "holdout_start": str(data.window.holdout_start), "metric": spec.metric,
            "xgboost_overrides": json.dumps(overrides or {}, sort_keys=True),
            "airflow_run_id": airflow_run_id or ""}
    with mlflow.start_run(run_name=f"train_{spec.name}_{data.window.end}") as run:
        mlflow.log_params(params)
        mlflow.log_metrics({f"holdout_{spec.metric}": candidate, f"baseline_{spec.metric}": baseline,
                            "train_rows": len(data.train), "holdout_rows": len(data.holdout),
                            "rows_dropped": data.rows_dropped, "fit_seconds": fit_seconds})
        mlflow.set_tags(tags)
        signature = model_signature(spec, example, model.predict(example))
        if profile is not None:
            log_reference(profile)
        info = mlflow.xgboost.log_model(model, name="model", signature=signature, input_example=example,
                                        registered_model_name=spec.name, pip_requirements=pip_requirements())
    version = str(info.registered_model_version)
    tag_version(spec, version, {**tags, "run_id": run.info.run_id, f"holdout_{spec.metric}": f"{candidate:.6g}",
                                **(profile.tags() if profile else {}), "gate.decision": "pending"})
    log.info("model %s: registered version %s (run %s): holdout %s %.4f, baseline %.4f, %d train / %d holdout "
             "rows, fit %.1fs, params %s", spec.name, version, run.info.run_id, spec.metric, candidate, baseline,
             len(data.train), len(data.holdout), fit_seconds, json.dumps(params, sort_keys=True))
    return Candidate(version, run.info.run_id, candidate, baseline, data.window)


def train_and_register(spec: ModelSpec, conn: psycopg.Connection, end: dt.date, *,
                       overrides: dict[str, Any] | None = None, airflow_run_id: str | None = None) -> TrainingResult:
    """Train on the window ending at `end`, log and register a version, then the one promotion gate
    (scoring.gate.evaluate_version, as for a version logged from anywhere)."""
    from scoring.gate import evaluate_version  # the gate builds on this module

    data = load_training_data(conn, spec, end)
    candidate = train_and_log(spec, data, overrides=overrides, airflow_run_id=airflow_run_id)
    decision = evaluate_version(spec, candidate.version, conn, end, data)
    return TrainingResult(candidate.version, candidate.run_id, candidate.metric, decision)
