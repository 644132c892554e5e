"""The scorer's direct call into XGBoost gives exactly what Booster.inplace_predict gives."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import xgboost as xgb

from scoring.dense_predict import DensePredictor


def _booster(objective: str, seed: int = 0) -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((3000, 9), dtype=np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    y = (np.nan_to_num(x[:, 0]) + rng.random(3000) * 0.5 > 0.7).astype(float) if objective.startswith("binary") \
        else np.nan_to_num(x[:, 1]) * 10 + rng.random(3000)
    booster = xgb.train({"objective": objective, "max_depth": 4, "nthread": 1}, xgb.DMatrix(x, y), 40)
    return booster, x


@pytest.mark.parametrize("objective", ["binary:logistic", "reg:squarederror"])
def test_same_values_as_inplace_predict(objective):
    booster, x = _booster(objective)
    predictor = DensePredictor(booster)
    for rows in (x[:1], x[:7], x, np.asfortranarray(x[:100]), x[::3], x[:5].astype(np.float64)):
        want = booster.inplace_predict(rows, validate_features=False)
        got = predictor.predict(rows)
        assert got.dtype == np.float32
        assert np.array_equal(got, want)  # bit for bit, NaNs (missing) included


def test_empty_and_wrong_shapes():
    booster, x = _booster("binary:logistic")
    predictor = DensePredictor(booster)
    assert predictor.predict(np.empty((0, 9), np.float32)).shape == (0,)
    with pytest.raises(ValueError, match="2-d"):
        predictor.predict(x[0])
    with pytest.raises(xgb.core.XGBoostError):  # XGBoost's own check, surfaced as its error
        predictor.predict(x[:, :5])


def test_multi_output_models_are_refused():
    rng = np.random.default_rng(1)
    x = rng.random((300, 4), dtype=np.float32)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3}, xgb.DMatrix(x, rng.integers(0, 3, 300)), 3)
    with pytest.raises(ValueError, match="single-output"):
        DensePredictor(booster).predict(x[:2])


def test_results_are_copied_out_per_call_and_per_thread():
    booster, x = _booster("binary:logistic")
    predictor = DensePredictor(booster)
    first = predictor.predict(x[:3])
    kept = first.copy()
    predictor.predict(x[100:200])  # XGBoost reuses its output buffer: ours must not change
    assert np.array_equal(first, kept)

    want = booster.inplace_predict(x, validate_features=False)
    failures: list[str] = []

    def hammer(offset: int) -> None:
        for i in range(offset, len(x), 37):
            if predictor.predict(x[i:i + 1])[0] != want[i]:
                failures.append(f"row {i}")

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
