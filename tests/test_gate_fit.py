"""What a version must be to serve, checked against the spec before the gate judges it (scoring.gate.spec_problems),
on model directories written by MLflow's own save_model (no service needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from mlflow.models import infer_signature

from scoring.demo_data import generate_day
from scoring.gate import spec_problems
from scoring.model_matrix import model_matrix, model_signature
from scoring.spec import load_spec

CHURN = load_spec("churn")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    import datetime as dt

    return generate_day(dt.date(2026, 10, 1), 400)


def _save(root: Path, model, signature) -> Path:
    import mlflow.xgboost

    path = root / "model"
    mlflow.xgboost.save_model(model, str(path), signature=signature, pip_requirements=["xgboost"])
    return path


def _fitting_signature(m, model):
    return model_signature(CHURN, m.features, model.predict(m.features))


def _fit(frame: pd.DataFrame, cls=xgb.XGBClassifier, label: str = "churned"):
    m = model_matrix(CHURN, frame)
    return m, cls(n_estimators=3, max_depth=2).fit(m.features, frame[label].astype(float)[m.valid])


def test_a_version_built_with_the_model_matrix_fits(tmp_path, frame):
    m, model = _fit(frame)
    assert m.n_rejected == 0 and list(m.features.columns) == CHURN.feature_names
    assert spec_problems(CHURN, _save(tmp_path, model, _fitting_signature(m, model))) == []


def test_order_extra_columns_and_float_types_are_named(tmp_path, frame):
    m, model = _fit(frame)
    shuffled = m.features[["plan", "tenure_months", *CHURN.feature_names[2:]]].assign(extra=1.0)
    shuffled["monthly_charges"] = shuffled["monthly_charges"].round().astype(np.int64)
    problems = spec_problems(CHURN, _save(tmp_path, model, infer_signature(shuffled, model.predict(m.features))))
    assert "unexpected input 'extra' (not a feature of the spec)" in problems
    assert any(p.startswith("inputs are in the order ['plan', 'tenure_months'") for p in problems)
    assert "input 'monthly_charges': signature says long, spec says number (double)" in problems
    assert len(problems) == 3, problems


def test_no_signature_and_a_tensor_signature_are_refused(tmp_path, frame):
    m, model = _fit(frame)
    assert spec_problems(CHURN, _save(tmp_path / "none", model, None))[0].startswith("no signature inputs")
    tensor = infer_signature(m.features.to_numpy(), model.predict(m.features))
    assert "not named columns" in spec_problems(CHURN, _save(tmp_path / "tensor", model, tensor))[0]


def test_a_regressor_for_a_classifier_spec_is_named(tmp_path, frame):
    m, model = _fit(frame, xgb.XGBRegressor)
    problems = spec_problems(CHURN, _save(tmp_path, model, _fitting_signature(m, model)))
    assert "task: the spec's model is a classifier (objective binary:logistic), the booster's objective is " \
           "reg:squarederror" in problems
    assert "task: the spec says classification, the logged model is a xgboost.sklearn.XGBRegressor" in problems


def test_a_booster_on_other_features_is_named(tmp_path, frame):
    m, _ = _fit(frame)
    narrow = m.features.iloc[:, :5]
    model = xgb.XGBClassifier(n_estimators=2).fit(narrow, frame["churned"].astype(float)[m.valid])
    problems = spec_problems(CHURN, _save(tmp_path, model, model_signature(CHURN, m.features, model.predict(narrow))))
    assert "the booster takes 5 features, the spec lists 12" in problems
