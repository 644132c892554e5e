"""XGBoost's dense in-place prediction, called without the Python wrapper's per-call overhead.

`Booster.inplace_predict` spends ~100 µs per call in Python (input type sniffing, a JSON config and an array
interface built every time, a class defined per call) around a C call that takes ~50 µs for one row of our
models: two thirds of a single-row prediction. `DensePredictor` makes the same C call
(`XGBoosterPredictFromDense`) with the same configuration, built once, so its predictions are the ones
`inplace_predict` returns, bit for bit (tests/test_dense_predict.py checks it). It relies on `xgboost.core` internals,
which is why the version is pinned in requirements.txt.

Thread-safe as `inplace_predict` is: XGBoost keeps the output buffer per thread, and it is copied out before
returning.
"""

from __future__ import annotations

import ctypes

import numpy as np
import xgboost as xgb
from xgboost.core import _LIB, _check_call, c_bst_ulong, make_jcargs

_PREDICT_VALUES = make_jcargs(type=0, training=False, iteration_begin=0, iteration_end=0, missing=np.nan,
                              strict_shape=False, cache_id=0)


class DensePredictor:
    """Predict transformed values (probabilities, regression values) for a float32 row-major matrix."""

    def __init__(self, booster: xgb.Booster) -> None:
        self._booster = booster  # keeps the handle alive
        self._handle = booster.handle
        self._no_proxy = ctypes.c_void_p()

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """One prediction per row (float32). `matrix` is (rows, features); NaN means missing."""
        data = np.ascontiguousarray(matrix, dtype=np.float32)
        if data.ndim != 2:
            raise ValueError(f"expected a 2-d matrix, got {data.ndim} dimension(s)")
        rows, cols = data.shape
        if rows == 0:
            return np.empty(0, dtype=np.float32)
        interface = (f'{{"data": [{data.ctypes.data}, true], "strides": null, "descr": [["", "<f4"]], '
                     f'"typestr": "<f4", "shape": [{rows}, {cols}], "version": 3}}').encode()
        shape = ctypes.POINTER(c_bst_ulong)()
        dims = c_bst_ulong()
        out = ctypes.POINTER(ctypes.c_float)()
        _check_call(_LIB.XGBoosterPredictFromDense(self._handle, interface, _PREDICT_VALUES, self._no_proxy,
                                                   ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(out)))
        size = 1
        for i in range(dims.value):
            size *= shape[i]
        if size != rows:  # one output per row for binary classification and regression
            raise ValueError(f"model returned {size} values for {rows} rows: not a single-output model")
        return np.ctypeslib.as_array(out, shape=(size,)).copy()
