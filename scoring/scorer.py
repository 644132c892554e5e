"""The shared scorer: one registered model version, one way to turn features into predictions.

Batch, online and async serving all call `Scorer.score`, so the same features and version give
bit-identical predictions everywhere.
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


@dataclass
class Scorer:
    spec: ModelSpec
    booster: xgb.Booster
    version: str
    loaded_at: float = field(default_factory=time.time)
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

    def score(self, data: Any) -> Predictions:
        """Validate (raising a typed InputError naming column and row) and score any accepted input."""
        return self.predict_matrix(self.encode(data).matrix)
