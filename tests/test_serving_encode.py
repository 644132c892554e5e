"""The serving fast path for JSON records gives exactly what the shared encoder gives: matrices and errors."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from scoring.demo_data import generate_day
from scoring.encoding import InputError, encode, encode_columns
from scoring.spec import load_specs
from serving.fast_encode import category_maps, encode_records, records_to_fast_columns


def _records(spec, n: int) -> list[dict]:
    frame = generate_day(dt.date(2026, 11, 3), n)[spec.feature_names]
    return json.loads(frame.to_json(orient="records", double_precision=15))


@pytest.mark.parametrize("name", ["churn", "spend"])
def test_fast_columns_equal_the_encoder(name):
    spec = load_specs()[name]
    maps = category_maps(spec)
    records = _records(spec, 300)
    assert any(v is None for r in records for v in r.values())  # nulls are covered
    np.testing.assert_array_equal(encode_columns(spec, records_to_fast_columns(records, maps)).matrix,
                                  encode(spec, records).matrix)
    np.testing.assert_array_equal(encode_records(spec, records, maps), encode(spec, records).matrix)
    for rec in records[:50]:
        np.testing.assert_array_equal(encode_columns(spec, records_to_fast_columns([rec], maps)).matrix,
                                      encode(spec, [rec]).matrix)
        np.testing.assert_array_equal(encode_records(spec, [rec], maps), encode(spec, [rec]).matrix)


@pytest.mark.parametrize("change", [
    {"plan": "gold"}, {"plan": 1}, {"plan": 7}, {"plan": True}, {"plan": None}, {"tenure_months": 1.5},
    {"tenure_months": 2.0}, {"tenure_months": "3"}, {"tenure_months": True}, {"tenure_months": None},
    {"monthly_charges": "x"}, {"monthly_charges": [1]}, {"data_usage_gb": None}, {"region": None},
    {"region": ""}, {"extra": 1}, {"monthly_charges": float("nan")}, {"data_usage_gb": float("nan")},
    {"monthly_charges": float("inf")}, {"tenure_months": 2**60}, {"monthly_charges": 7}, {"region": "north"},
])
def test_fast_columns_same_errors_as_the_encoder(change):
    spec = load_specs()["churn"]
    maps = category_maps(spec)
    rec = {**_records(spec, 1)[0], **change}
    records = [_records(spec, 2)[1], rec]

    def outcome(fn):
        try:
            return ("ok", fn().matrix.tobytes())
        except InputError as exc:
            return (type(exc).__name__, str(exc), exc.column, exc.row)

    want = outcome(lambda: encode(spec, records))
    assert outcome(lambda: encode_columns(spec, records_to_fast_columns(records, maps))) == want
    direct = outcome(lambda: type("E", (), {"matrix": encode_records(spec, records, maps)})())
    assert direct == want
