"""The shared scorer against a real MLflow registry: equal to MLflow's own predictions."""

from __future__ import annotations

import datetime as dt

import mlflow
import numpy as np
import pandas as pd
import pytest

from scoring.demo_data import generate_day
from scoring.encoding import encode
from scoring.scorer import Scorer


@pytest.mark.parametrize("name", ["churn", "spend"])
def test_scorer_matches_mlflow(name, specs, trained_models):
    spec = specs[name]
    version = trained_models[name]
    scorer = Scorer.from_registry(spec, "champion")
    assert scorer.version == version
    frame = generate_day(dt.date(2026, 11, 2), 300)[spec.feature_names]
    ours = scorer.score(frame)
    model_frame = pd.DataFrame(encode(spec, frame).matrix.astype(np.float64), columns=spec.feature_names)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(model_frame)
    if spec.is_classifier:
        proba = mlflow.xgboost.load_model(f"models:/{name}/{version}").predict_proba(model_frame)[:, 1]
        np.testing.assert_allclose(ours.scores, proba, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ours.labels, np.asarray(pyfunc))
    else:
        np.testing.assert_allclose(ours.scores, np.asarray(pyfunc), rtol=1e-5, atol=1e-4)
