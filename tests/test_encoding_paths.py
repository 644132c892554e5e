"""The encoder's two paths for JSON records agree: the plain-records fast path (the online hot path) and the
column path give the same matrices, and input the fast path declines gets the column path's typed errors."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from scoring.demo_data import generate_day
from scoring.encoding import InputError, _plain_records_matrix, encode, encode_columns, records_to_columns
from scoring.spec import load_specs


def _records(spec, n: int) -> list[dict]:
    frame = generate_day(dt.date(2026, 11, 3), n)[spec.feature_names]
    return json.loads(frame.to_json(orient="records", double_precision=15))


def _column_path(spec, records):
    return encode_columns(spec, records_to_columns(records))


@pytest.mark.parametrize("name", ["churn", "spend"])
def test_fast_path_equals_column_path(name):
    spec = load_specs()[name]
    records = _records(spec, 300)
    assert any(v is None for r in records for v in r.values())  # nulls are covered
    fast = _plain_records_matrix(spec, records)
    assert fast is not None
    np.testing.assert_array_equal(fast, _column_path(spec, records).matrix)
    # large inputs code categories through pandas, small ones through a dict: the same codes
    np.testing.assert_array_equal(encode(spec, {k: list(v) for k, v in records_to_columns(records).items()}).matrix,
                                  fast)
    for rec in records[:50]:
        np.testing.assert_array_equal(_plain_records_matrix(spec, [rec]), _column_path(spec, [rec]).matrix)
        np.testing.assert_array_equal(encode(spec, [rec]).matrix, _column_path(spec, [rec]).matrix)


@pytest.mark.parametrize("change", [
    {"plan": "gold"}, {"plan": 1}, {"plan": 7}, {"plan": True}, {"plan": None}, {"tenure_months": 1.5},
    {"tenure_months": 2.0}, {"tenure_months": "3"}, {"tenure_months": True}, {"tenure_months": None},
    {"monthly_charges": "x"}, {"monthly_charges": [1]}, {"data_usage_gb": None}, {"region": None},
    {"region": ""}, {"extra": 1}, {"monthly_charges": float("nan")}, {"data_usage_gb": float("nan")},
    {"monthly_charges": float("inf")}, {"tenure_months": 2**60}, {"monthly_charges": 7}, {"region": "north"},
])
def test_encode_gives_the_column_paths_result_or_error(change):
    spec = load_specs()["churn"]
    rec = {**_records(spec, 1)[0], **change}
    records = [_records(spec, 2)[1], rec]

    def outcome(fn):
        try:
            return ("ok", fn().matrix.tobytes())
        except InputError as exc:
            return (type(exc).__name__, str(exc), exc.column, exc.row)

    assert outcome(lambda: encode(spec, records)) == outcome(lambda: _column_path(spec, records))
