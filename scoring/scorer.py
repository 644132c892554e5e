"""The shared scorer: one registered model version, one way to turn features into predictions and their reasons.

Batch, online and async serving all call `Scorer.score`, so the same features and version give
bit-identical predictions everywhere; `Scorer.contributions` gives the reasons of the same rows through the same
encoded matrix and booster.

Contributions (reasons) are in the model's margin space: the log-odds for a classifier, the predicted value for a
squared-error regressor. Per row they are one number per feature plus the bias (the expected margin), and
feature contributions + bias = the margin (XGBoost's `pred_contribs`). A category feature is one column of the
matrix (its spec code), so it has ONE contribution: that of the category the row has, not one per category.
"exact" is TreeSHAP (consistent, ~200x the cost of a prediction); "approx" is Saabas' path attribution (~5x).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb

from scoring.dense_predict import DensePredictor
from scoring.encoding import Encoded, encode
from scoring.registry import CHAMPION, load_booster, resolve_version
from scoring.spec import ModelSpec

CLASS_THRESHOLD = 0.5  # XGBClassifier.predict (and so MLflow's pyfunc) labels 1 when score > 0.5


class ModelMismatchError(RuntimeError):
    """The registered model does not take the features the spec lists (the spec changed after training)."""


@dataclass
class Predictions:
    scores: np.ndarray  # probability of class 1 (classification) or the predicted value (regression)
    labels: np.ndarray | None  # 0/1 class labels for classifiers, None for regressors

    def __len__(self) -> int:
        return len(self.scores)

    def values(self) -> np.ndarray:
        """What MLflow's pyfunc predict returns: class labels for a classifier, values for a regressor."""
        return self.labels if self.labels is not None else self.scores

    def records(self) -> list[dict[str, Any]]:
        if self.labels is None:
            return [{"prediction": float(s)} for s in self.scores]
        return [{"score": float(s), "label": int(lab)} for s, lab in zip(self.scores, self.labels, strict=True)]


EXPLAIN_METHODS = ("exact", "approx")
# Set by the promotion gate (explain_gate_tags): may this version answer exact reasons online within its budget?
EXPLAIN_ONLINE_TAG, EXPLAIN_P99_TAG = "gate.explain_online", "gate.explain_p99_ms"


@dataclass(frozen=True)
class ExplainRequest:
    """What a live caller asked for: the top_k largest contributions (None: every feature), exact or approx."""

    top_k: int | None = None
    method: str = "exact"


@dataclass
class Contributions:
    """Per-row, per-feature contributions in margin space; `values.sum(axis=1) + bias` is each row's margin."""

    values: np.ndarray  # float32 (rows, features), spec feature order
    bias: np.ndarray  # float32 (rows,)
    matrix: np.ndarray  # the encoded rows they explain: the values "as the model saw them"
    spec: ModelSpec
    method: str

    def __len__(self) -> int:
        return len(self.bias)

    @property
    def margins(self) -> np.ndarray:
        return self.values.sum(axis=1, dtype=np.float64) + self.bias

    def ranked(self, top_k: int | None = None) -> np.ndarray:
        """Feature indices per row, largest |contribution| first (ties: spec order); top_k columns (None: all)."""
        order = np.argsort(-np.abs(self.values), axis=1, kind="stable")
        return order if top_k is None else order[:, :top_k]

    def feature_value(self, row: int, j: int) -> Any:
        """Feature j of a row as the model saw it: the category name, the number, or None when missing."""
        value = float(self.matrix[row, j])
        if value != value:
            return None
        feature = self.spec.features[j]
        return feature.categories[int(value)] if feature.type == "category" else value

    def records(self, top_k: int | None = None) -> list[dict[str, Any]]:
        """Per row: {"bias", "contributions": [{feature, value, contribution}, ...] largest first}."""
        names = self.spec.feature_names
        out = []
        for i, order in enumerate(self.ranked(top_k)):
            out.append({"bias": float(self.bias[i]), "contributions": [
                {"feature": names[j], "value": self.feature_value(i, j), "contribution": float(self.values[i, j])}
                for j in order]})
        return out


@dataclass
class Scorer:
    spec: ModelSpec
    booster: xgb.Booster
    version: str
    loaded_at: float = field(default_factory=time.time)
    # The gate's verdict on exact reasons online (None: not measured, e.g. a version gated before reasons)
    explain_online: bool | None = None
    explain_p99_ms: float | None = None
    _predictor: DensePredictor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._predictor = DensePredictor(self.booster)

    @classmethod
    def from_registry(cls, spec: ModelSpec, ref: str | int = CHAMPION, *, threads: int | None = None) -> Scorer:
        """Load `ref` (alias, version number or models:/ URI) of the spec's registered model."""
        version = resolve_version(spec.name, ref)
        return cls.from_booster(spec, load_booster(spec.name, version), version, threads=threads)

    @classmethod
    def from_booster(cls, spec: ModelSpec, booster: xgb.Booster, version: str, *,
                     threads: int | None = None) -> Scorer:
        if booster.feature_names is not None and list(booster.feature_names) != spec.feature_names:
            raise ModelMismatchError(
                f"model '{spec.name}' version {version} was trained on {booster.feature_names}, "
                f"but the spec lists {spec.feature_names}")
        if threads:
            booster.set_param({"nthread": threads})
        return cls(spec=spec, booster=booster, version=str(version))

    def encode(self, data: Any, *, reject: bool = False, allow_extra: bool = False) -> Encoded:
        return encode(self.spec, data, reject=reject, allow_extra=allow_extra)

    def predict_matrix(self, matrix: np.ndarray) -> Predictions:
        """Score an already-encoded float32 matrix (spec feature order)."""
        scores = self._predictor.predict(matrix)
        labels = (scores > CLASS_THRESHOLD).astype(np.int8) if self.spec.is_classifier else None
        return Predictions(scores=scores, labels=labels)

    def contributions(self, matrix: np.ndarray, method: str = "exact") -> Contributions:
        """The contributions of an already-encoded float32 matrix (what `predict_matrix` scores)."""
        if method not in EXPLAIN_METHODS:
            raise ValueError(f"explain method must be one of {EXPLAIN_METHODS}, got {method!r}")
        data = np.ascontiguousarray(matrix, dtype=np.float32)
        n = len(self.spec.features)
        if len(data) == 0:
            return Contributions(np.empty((0, n), np.float32), np.empty(0, np.float32), data, self.spec, method)
        # One thread builds a few rows fastest (no OpenMP hand-off); the booster's own threads predict.
        dmatrix = xgb.DMatrix(data, missing=np.nan, nthread=1 if len(data) <= 256 else -1)
        out = self.booster.predict(dmatrix, pred_contribs=True, approx_contribs=method == "approx",
                                   validate_features=False)
        return Contributions(np.ascontiguousarray(out[:, :n]), np.ascontiguousarray(out[:, n]), data, self.spec,
                             method)

    def margins(self, matrix: np.ndarray) -> np.ndarray:
        """Untransformed scores (log-odds for a classifier): what the contributions sum to."""
        dmatrix = xgb.DMatrix(np.ascontiguousarray(matrix, dtype=np.float32), missing=np.nan, nthread=1)
        return self.booster.predict(dmatrix, output_margin=True, validate_features=False)

    def score(self, data: Any) -> Predictions:
        """Validate (raising a typed InputError naming column and row) and score any accepted input."""
        return self.predict_matrix(self.encode(data).matrix)


class _Explaining:
    """A scorer whose `score` also computes the exact contributions: what a live explain request costs."""

    def __init__(self, scorer: Scorer) -> None:
        self.spec = scorer.spec
        self._scorer = scorer

    def score(self, data: Any) -> Contributions:
        matrix = self._scorer.encode(data).matrix
        self._scorer.predict_matrix(matrix)
        return self._scorer.contributions(matrix)


def explain_gate_tags(scorer: Scorer, records: list[dict[str, Any]]) -> dict[str, str]:
    """The promotion gate's measurement of the explain path: p99 of one record scored with its exact reasons
    (the gate's own single-row timing), and whether that fits the model's latency budget."""
    from scoring.training import single_row_p99_ms

    p99 = single_row_p99_ms(_Explaining(scorer), records)  # type: ignore[arg-type]  # duck-typed: spec + score
    return {EXPLAIN_P99_TAG: f"{p99:.3f}",
            EXPLAIN_ONLINE_TAG: str(p99 <= scorer.spec.serving.latency_budget_ms).lower()}


def read_explain_verdict(scorer: Scorer, tags: dict[str, str]) -> None:
    """Set the gate's verdict (a version's tags) on a loaded scorer."""
    if EXPLAIN_ONLINE_TAG in tags:
        scorer.explain_online = tags[EXPLAIN_ONLINE_TAG] == "true"
        scorer.explain_p99_ms = float(tags.get(EXPLAIN_P99_TAG, "nan"))
