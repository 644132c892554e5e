"""Input encoding: every accepted form gives the same float32 matrix; every problem is a typed error naming
column and row, or (reject mode) a kept reason per row with the row's index."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from scoring.demo_data import generate_day
from scoring.encoding import (
    InputError,
    MissingColumnError,
    NullValueError,
    UnknownCategoryError,
    UnknownColumnError,
    WrongTypeError,
    encode,
    encode_columns,
    records_to_columns,
)
from scoring.spec import load_spec

SPEC = load_spec("churn")
NAMES = SPEC.feature_names


def _record(**changes) -> dict:
    rec = {"tenure_months": 12, "plan": "premium", "contract": "one-year", "region": "south",
           "payment_method": "invoice", "monthly_charges": 70.5, "data_usage_gb": 3.25, "avg_session_minutes": 14.0,
           "support_calls_30d": 2, "late_payments_12m": 0, "num_products": 3, "days_since_last_login": 5}
    rec.update(changes)
    return rec


def test_one_record_becomes_the_expected_row():
    row = encode(SPEC, [_record()]).matrix
    assert row.dtype == np.float32 and row.shape == (1, len(NAMES))
    expected = [12, 2, 1, 1, 2, 70.5, 3.25, 14.0, 2, 0, 3, 5]  # categories by position in the spec's list
    np.testing.assert_array_equal(row[0], np.array(expected, dtype=np.float32))


def test_records_frame_columns_and_numpy_give_identical_matrices():
    frame = generate_day(dt.date(2026, 11, 1), 500)[NAMES]
    assert frame.isna().any().any()  # the demo data has missing values: they must survive every form
    from_frame = encode(SPEC, frame).matrix
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    from_records = encode(SPEC, records).matrix
    from_columns = encode(SPEC, {c: frame[c].tolist() for c in NAMES}).matrix
    from_object_array = encode(SPEC, frame.to_numpy(dtype=object)).matrix
    from_code_array = encode(SPEC, from_frame.astype(np.float64)).matrix  # categories given as codes
    for other in (from_records, from_columns, from_object_array, from_code_array):
        np.testing.assert_array_equal(from_frame, other)  # NaN == NaN in assert_array_equal
    assert np.isnan(from_frame).any()


def test_category_as_string_or_code_is_the_same():
    as_string = encode(SPEC, [_record(plan="standard", region=None)]).matrix
    as_code = encode(SPEC, [_record(plan=1, region=None)]).matrix
    as_float_code = encode(SPEC, [_record(plan=1.0, region=None)]).matrix
    np.testing.assert_array_equal(as_string, as_code)
    np.testing.assert_array_equal(as_string, as_float_code)
    assert as_string[0, NAMES.index("plan")] == 1 and np.isnan(as_string[0, NAMES.index("region")])


def test_missing_column_names_it():
    rec = _record()
    del rec["contract"]
    frame = pd.DataFrame([rec])
    with pytest.raises(MissingColumnError) as info:
        encode(SPEC, frame)
    assert info.value.column == "contract" and "missing feature column 'contract'" in str(info.value)
    assert info.value.kind == "missing_column"


def test_a_key_missing_from_one_record_is_a_null_in_that_row():
    rec = _record()
    del rec["plan"]
    with pytest.raises(NullValueError) as info:
        encode(SPEC, [_record(), rec])
    assert (info.value.column, info.value.row) == ("plan", 1)


def test_unknown_column_unless_allowed():
    with pytest.raises(UnknownColumnError) as info:
        encode(SPEC, [_record(shoe_size=44)])
    assert info.value.column == "shoe_size"
    assert encode(SPEC, [_record(shoe_size=44)], allow_extra=True).matrix.shape == (1, len(NAMES))


@pytest.mark.parametrize("column, value, error, text", [
    ("tenure_months", "12", WrongTypeError, "feature 'tenure_months' expects an integer, got '12'"),
    ("tenure_months", 1.5, WrongTypeError, "expects an integer, got 1.5"),
    ("tenure_months", True, WrongTypeError, "got True"),
    ("monthly_charges", "cheap", WrongTypeError, "feature 'monthly_charges' expects a finite number"),
    ("monthly_charges", float("inf"), WrongTypeError, "expects a finite number, got inf"),
    ("monthly_charges", [1, 2], WrongTypeError, "monthly_charges"),
    ("plan", "gold", UnknownCategoryError, "unknown category 'gold'; feature 'plan' expects one of"),
    ("plan", "Premium", UnknownCategoryError, "unknown category 'Premium'"),
    ("plan", 3, WrongTypeError, "feature 'plan' expects one of ['basic', 'standard', 'premium'], got 3"),
    ("plan", -1, WrongTypeError, "got -1"),
    ("plan", 0.5, WrongTypeError, "got 0.5"),
    ("plan", ["basic"], WrongTypeError, "got ['basic']"),
    ("plan", {"name": "basic"}, WrongTypeError, "got {'name': 'basic'}"),
    ("plan", True, WrongTypeError, "got True"),
    ("plan", None, NullValueError, "feature 'plan' must not be null"),
    ("tenure_months", None, NullValueError, "feature 'tenure_months' must not be null"),
    ("tenure_months", float("nan"), NullValueError, "must not be null"),
    ("tenure_months", pd.NA, NullValueError, "must not be null"),
])
def test_bad_values_raise_a_typed_error_naming_column_and_row(column, value, error, text):
    with pytest.raises(error) as info:
        encode(SPEC, [_record(), _record(), _record(**{column: value})])
    assert info.value.column == column and info.value.row == 2
    assert str(info.value).startswith("row 2: ") and text in str(info.value)
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("column", ["region", "data_usage_gb", "avg_session_minutes", "days_since_last_login"])
def test_nullable_features_take_null_as_missing(column):
    for missing in (None, float("nan"), pd.NA):
        row = encode(SPEC, [_record(**{column: missing})]).matrix
        assert np.isnan(row[0, NAMES.index(column)])


def test_numbers_of_any_numeric_type_are_accepted():
    row = encode(SPEC, [_record(tenure_months=np.int64(12), monthly_charges=np.float32(70.5), num_products=3.0)])
    np.testing.assert_array_equal(row.matrix, encode(SPEC, [_record()]).matrix)


def test_category_values_that_look_like_missing_are_unknown_not_null():
    with pytest.raises(UnknownCategoryError, match="unknown category 'NA'"):
        encode(SPEC, [_record(plan="NA")])


def test_reject_mode_keeps_row_indexes_and_reasons():
    records = [_record(), _record(plan="gold"), _record(), _record(tenure_months="x", plan=None),
               _record(region=None), _record(monthly_charges=None)]
    out = encode(SPEC, records, reject=True)
    assert out.valid.tolist() == [True, False, True, False, True, False]
    assert out.matrix.shape == (3, len(NAMES)) and out.n_rejected == 3
    assert [(e.row, e.column, e.kind) for e in out.rejects] == [
        (1, "plan", "unknown_category"),
        (3, "tenure_months", "wrong_type"),  # a row's first problem, in feature order
        (5, "monthly_charges", "null_value"),
    ]
    assert all(f"row {e.row}:" in str(e) for e in out.rejects)
    good = encode(SPEC, [records[i] for i in (0, 2, 4)]).matrix
    np.testing.assert_array_equal(out.matrix, good)


def test_reject_mode_on_numpy_columns():
    frame = generate_day(dt.date(2026, 11, 1), 50)[NAMES].copy()
    frame.loc[7, "contract"] = "lifetime"
    frame.loc[9, "tenure_months"] = np.nan
    out = encode_columns(SPEC, {c: frame[c].to_numpy() for c in NAMES}, reject=True)
    assert [(e.row, e.column) for e in out.rejects] == [(7, "contract"), (9, "tenure_months")]
    assert out.matrix.shape == (48, len(NAMES))


@pytest.mark.parametrize("data, text", [
    ([], "records must not be empty"),
    ("tenure_months", "records must be a list of objects"),
    ([1, 2], "row 0: each record must be an object"),
    (_record(), "column 'tenure_months' must be a 1-D list of values"),  # one record, not wrapped in a list
    (np.zeros((2, 3)), "array input must be 2-D with 12 columns"),
    ({**{n: [1, 2] for n in NAMES}, "plan": [0]}, "column 'plan' has 1 rows, expected 2"),
])
def test_malformed_input_is_an_input_error(data, text):
    with pytest.raises(InputError, match=text.replace("(", r"\(").replace("[", r"\[")):
        encode(SPEC, data)


def test_records_to_columns_unions_keys():
    cols = records_to_columns([{"a": 1}, {"b": 2}])
    assert cols == {"a": [1, None], "b": [None, 2]}


def test_zero_rows_give_an_empty_matrix():
    out = encode(SPEC, pd.DataFrame({n: pd.Series(dtype=float) for n in NAMES}))
    assert out.matrix.shape == (0, len(NAMES)) and out.rejects == []
