"""Training: labelled history -> XGBoost model -> MLflow run and registered version -> promotion gate.

The gate promotes a candidate to the `champion` alias only if
  (a) its metric on the held-out window is at least as good as the current champion's on the same rows
      (the first version must beat a trivial baseline instead), and
  (b) for online models, its single-row p99 latency through the shared scorer is inside the spec's budget.
Every decision and its figures are written as tags on the version; a refused version stays registered.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import psycopg
import xgboost as xgb
from mlflow.models import infer_signature
from psycopg import sql
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

from scoring.encoding import encode
from scoring.registry import CHAMPION, RegistryError, client, load_booster, resolve_version
from scoring.scorer import Scorer
from scoring.spec import ModelSpec

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot proceed (no or too little labelled data in the window)."""


@dataclass
class TrainingData:
    train: pd.DataFrame  # encoded features (float64, spec order) + label column
    holdout: pd.DataFrame
    window: tuple[dt.date, dt.date]  # [start, end) of the whole window
    holdout_start: dt.date
    rows_dropped: int = 0


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    figures: dict[str, float] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        tags = {"gate.decision": "promoted" if self.promoted else "refused", "gate.reason": self.reason}
        tags.update({f"gate.{k}": f"{v:.6g}" for k, v in self.figures.items()})
        return tags


@dataclass
class TrainingResult:
    version: str
    run_id: str
    metric: float
    decision: GateDecision


def load_training_data(conn: psycopg.Connection, spec: ModelSpec, end: dt.date) -> TrainingData:
    """Labelled rows with date in [end - history_days, end); the last holdout_days are held out."""
    start = end - dt.timedelta(days=spec.training.history_days)
    holdout_start = end - dt.timedelta(days=spec.training.holdout_days)
    src = spec.source
    query = sql.SQL("SELECT {date}, {cols} FROM {table} WHERE {date} >= %s AND {date} < %s AND {label} IS NOT NULL"
                    ).format(date=sql.Identifier(src.date_column),
                             cols=sql.SQL(", ").join(map(sql.Identifier, [*spec.feature_names, spec.label])),
                             table=sql.Identifier(*src.table.split(".")), label=sql.Identifier(spec.label))
    with conn.cursor() as cur:
        cur.execute(query, (start, end))
        frame = pd.DataFrame(cur.fetchall(), columns=[src.date_column, *spec.feature_names, spec.label])
    if len(frame) < spec.training.min_rows:
        raise TrainingError(f"model '{spec.name}': only {len(frame)} labelled rows in [{start}, {end}) "
                            f"(training.min_rows is {spec.training.min_rows}); load more feature history first")
    encoded = encode(spec, frame[spec.feature_names], reject=True)
    kept = frame[encoded.valid].reset_index(drop=True)
    data = pd.DataFrame(encoded.matrix.astype(np.float64), columns=spec.feature_names)
    data[spec.label] = kept[spec.label].astype(float).to_numpy()
    is_holdout = (kept[src.date_column] >= holdout_start).to_numpy()
    train, holdout = data[~is_holdout].reset_index(drop=True), data[is_holdout].reset_index(drop=True)
    for part, rows in (("training", train), ("held-out", holdout)):
        if len(rows) == 0:
            raise TrainingError(f"model '{spec.name}': the {part} part of [{start}, {end}) has no valid rows")
    return TrainingData(train, holdout, (start, end), holdout_start, rows_dropped=encoded.n_rejected)


def fit(spec: ModelSpec, train: pd.DataFrame, overrides: dict[str, Any] | None = None) -> xgb.XGBModel:
    params = {"random_state": 42, "n_jobs": 2, **spec.xgboost, **(overrides or {})}
    model = xgb.XGBClassifier(**params) if spec.is_classifier else xgb.XGBRegressor(**params)
    model.fit(train[spec.feature_names], train[spec.label])
    return model


def metric_value(spec: ModelSpec, y_true: np.ndarray, scores: np.ndarray) -> float:
    """The spec's metric; `scores` are class-1 probabilities for classifiers and values for regressors."""
    if spec.metric == "roc_auc":
        return float(roc_auc_score(y_true, scores))
    if spec.metric == "log_loss":
        return float(log_loss(y_true, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))
    if spec.metric == "accuracy":
        return float(accuracy_score(y_true, scores >= 0.5))
    if spec.metric == "rmse":
        return float(root_mean_squared_error(y_true, scores))
    return float(mean_absolute_error(y_true, scores))


def baseline_metric(spec: ModelSpec, train: pd.DataFrame, holdout: pd.DataFrame) -> float:
    """The trivial model: the training prior (classifier) or mean (regressor) for every row."""
    constant = np.full(len(holdout), float(train[spec.label].mean()))
    if spec.metric == "roc_auc":
        return 0.5
    return metric_value(spec, holdout[spec.label].to_numpy(), constant)


def better_or_equal(spec: ModelSpec, candidate: float, reference: float) -> bool:
    return candidate >= reference if spec.higher_is_better else candidate <= reference


def single_row_p99_ms(scorer: Scorer, rows: pd.DataFrame, n: int = 300) -> float:
    """p99 of scoring one JSON-like record at a time through the shared scorer (validation included)."""
    records = rows[scorer.spec.feature_names].head(50).replace({np.nan: None}).to_dict("records")
    for rec in records[:10]:  # warm-up
        scorer.score([rec])
    timings = []
    for i in range(n):
        started = time.perf_counter()
        scorer.score([records[i % len(records)]])
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(timings, 99))


def champion_metric(spec: ModelSpec, holdout: pd.DataFrame) -> tuple[str, float] | None:
    """The current champion's version and its metric on the same held-out rows, or None if there is none."""
    try:
        version = resolve_version(spec.name, CHAMPION)
    except RegistryError as exc:
        if "no version with alias" in str(exc):
            return None
        raise
    champion = Scorer.from_booster(spec, load_booster(spec.name, version), version)
    scores = champion.predict_matrix(holdout[spec.feature_names].to_numpy(np.float32)).scores
    return version, metric_value(spec, holdout[spec.label].to_numpy(), scores)


def decide(spec: ModelSpec, candidate: float, baseline: float, champion: tuple[str, float] | None,
           p99_ms: float | None) -> GateDecision:
    m = spec.metric
    figures: dict[str, float] = {f"candidate_{m}": candidate, f"baseline_{m}": baseline}
    if champion is not None:
        figures[f"champion_{m}"] = champion[1]
        figures["champion_version"] = float(champion[0])
    if p99_ms is not None:
        figures["p99_ms"] = p99_ms
        figures["budget_ms"] = spec.serving.latency_budget_ms
        if p99_ms > spec.serving.latency_budget_ms:
            return GateDecision(False, f"single-row p99 {p99_ms:.2f} ms is over the budget of "
                                       f"{spec.serving.latency_budget_ms:g} ms", figures)
    if champion is None:
        if not better_or_equal(spec, candidate, baseline) or candidate == baseline:
            return GateDecision(False, f"{m} {candidate:.4f} does not beat the trivial baseline {baseline:.4f}",
                                figures)
        return GateDecision(True, f"first version: {m} {candidate:.4f} beats the baseline {baseline:.4f}", figures)
    if not better_or_equal(spec, candidate, champion[1]):
        return GateDecision(False, f"{m} {candidate:.4f} is worse than champion v{champion[0]} "
                                   f"({champion[1]:.4f}) on the same held-out window", figures)
    return GateDecision(True, f"{m} {candidate:.4f} is at least as good as champion v{champion[0]} "
                              f"({champion[1]:.4f})", figures)


def train_and_register(spec: ModelSpec, conn: psycopg.Connection, end: dt.date, *,
                       overrides: dict[str, Any] | None = None, airflow_run_id: str | None = None) -> TrainingResult:
    """Train on the window ending at `end`, log and register a version, run the gate, set the alias if it passes."""
    data = load_training_data(conn, spec, end)
    model = fit(spec, data.train, overrides)
    x_holdout = data.holdout[spec.feature_names]
    y_holdout = data.holdout[spec.label].to_numpy()
    candidate_scores = (model.predict_proba(x_holdout)[:, 1] if spec.is_classifier else model.predict(x_holdout))
    candidate = metric_value(spec, y_holdout, candidate_scores)
    baseline = baseline_metric(spec, data.train, data.holdout)

    mlflow.set_experiment(f"serving/{spec.name}")
    example = data.train[spec.feature_names].dropna().head(5)
    window = f"{data.window[0]}..{data.window[1]}"
    with mlflow.start_run(run_name=f"train_{spec.name}_{end}") as run:
        mlflow.log_params({**spec.xgboost, **(overrides or {})})
        mlflow.log_metrics({f"holdout_{spec.metric}": candidate, f"baseline_{spec.metric}": baseline,
                            "train_rows": len(data.train), "holdout_rows": len(data.holdout),
                            "rows_dropped": data.rows_dropped})
        mlflow.set_tags({"features": ",".join(spec.feature_names), "training_window": window,
                         "holdout_start": str(data.holdout_start), "airflow_run_id": airflow_run_id or ""})
        signature = infer_signature(example, model.predict(example))
        info = mlflow.xgboost.log_model(model, name="model", signature=signature, input_example=example,
                                        registered_model_name=spec.name)
    version = str(info.registered_model_version)
    mc = client()
    for key, value in {"features": ",".join(spec.feature_names), "training_window": window,
                       "holdout_start": str(data.holdout_start)}.items():
        mc.set_model_version_tag(spec.name, version, key, value)

    p99 = None
    if spec.serving.online:
        p99 = single_row_p99_ms(Scorer.from_booster(spec, model.get_booster(), version), data.holdout)
    decision = decide(spec, candidate, baseline, champion_metric(spec, data.holdout), p99)
    for key, value in decision.tags().items():
        mc.set_model_version_tag(spec.name, version, key, value)
    if decision.promoted:
        mc.set_registered_model_alias(spec.name, CHAMPION, version)
    log.info("model %s version %s: %s (%s) figures=%s", spec.name, version,
             "PROMOTED to champion" if decision.promoted else "REFUSED", decision.reason, decision.figures)
    return TrainingResult(version=version, run_id=run.info.run_id, metric=candidate, decision=decision)
