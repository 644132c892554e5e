"""The model matrix of a DataFrame, built by the platform's own encoder: what a version must be trained on.

Serving, batch and the async worker all score the matrix `scoring.encoding` builds (spec feature order, category
values as their integer codes, NaN for missing, as float). A version trained anywhere else (a notebook, another
pipeline) fits the platform only if it was trained on that same matrix; these helpers build it, and the
signature that says so, for `mlflow.xgboost.log_model`:

    from scoring.model_matrix import model_matrix, model_signature
    m = model_matrix(spec, df)                                  # rows the encoder rejects are left out
    model = xgboost.XGBClassifier().fit(m.features, df[spec.label][m.valid])
    mlflow.xgboost.log_model(model, name="model", registered_model_name=spec.name,
                             signature=model_signature(spec, m.features, model.predict(m.features)))

The platform's own training (scoring.training) builds its matrices and signature with the same two functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature

from scoring.encoding import InputError, encode
from scoring.spec import ModelSpec


@dataclass
class ModelMatrix:
    features: pd.DataFrame  # float64 columns named and ordered as the spec's features (category codes)
    valid: np.ndarray  # bool mask over the input rows: the rows `features` holds
    rejects: list[InputError]  # why each other row was left out (its first problem, naming column and row)

    @property
    def n_rejected(self) -> int:
        return len(self.rejects)


def model_matrix(spec: ModelSpec, frame: pd.DataFrame) -> ModelMatrix:
    """The encoded features of `frame`'s valid rows (extra columns, e.g. the label or a key, are ignored)."""
    missing = [name for name in spec.feature_names if name not in frame.columns]
    if missing:
        raise InputError(f"model '{spec.name}': missing feature column(s) {missing}", column=missing[0])
    encoded = encode(spec, frame[spec.feature_names], reject=True)
    features = pd.DataFrame(encoded.matrix.astype(np.float64), columns=spec.feature_names)
    return ModelMatrix(features, encoded.valid, encoded.rejects)


def model_signature(spec: ModelSpec, features: pd.DataFrame, predictions: Any) -> ModelSignature:
    """The signature of a version trained on `features` (a model_matrix): one double input per spec feature, in
    the spec's order, which the promotion gate checks against the spec before judging the version."""
    return infer_signature(features[spec.feature_names], predictions)
