"""A `type: int` feature holds what a bigint column holds, checked on the integer as sent: exactly -2**63 and
2**63 - 1 are scored, one beyond either end is a 4xx naming the feature, on every protocol and in the jobs path
(as floats -2**63 - 1 and 2**63 both round onto the bounds, so a check after a float conversion lets them
through). In-process (tests/inprocess.py), as tests/test_bad_input.py."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pandas as pd
import pytest
from inprocess import RECORD, churn_spec, make_app, train_scorer

from scoring.encoding import INT64_MAX, INT64_MIN, WrongTypeError, check_json_ints, encode, encode_columns

SPEC = churn_spec()
NAMES = SPEC.feature_names
FEATURE = "tenure_months"  # a `type: int` feature
COL = NAMES.index(FEATURE)
# The record with every value numeric (categories as their integer codes): the form MLflow's signature and OIP's
# 2-D tensor take.
NUMERIC = [0 if f.type == "category" else 1 for f in SPEC.features]
INSIDE = [INT64_MIN, INT64_MAX]
OUTSIDE = [INT64_MIN - 1, INT64_MAX + 1]


@pytest.fixture(scope="module")
def client():
    app, _ = make_app(train_scorer(SPEC))
    return app.test_client()


def _numeric_row(value: int) -> list[int]:
    row = list(NUMERIC)
    row[COL] = value
    return row


def _oip_feature_tensors(value: int) -> dict[str, Any]:
    inputs = []
    for f, v in zip(SPEC.features, _numeric_row(value), strict=True):
        if f.type == "category":
            inputs.append({"name": f.name, "datatype": "BYTES", "shape": [1], "data": [f.categories[0]]})
        else:
            inputs.append({"name": f.name, "datatype": "INT64", "shape": [1], "data": [v]})
    return {"inputs": inputs}


# protocol -> (path, body for a value of FEATURE, accepted status)
BODIES = {
    "v1": ("/v1/models/churn/predict", lambda v: {"records": [{**RECORD, FEATURE: v}]}, 200),
    "jobs": ("/v1/models/churn/jobs", lambda v: {"records": [{**RECORD, FEATURE: v}]}, 202),
    "mlflow dataframe_split": ("/invocations", lambda v: {"dataframe_split": {"columns": NAMES,
                                                                              "data": [_numeric_row(v)]}}, 200),
    "mlflow dataframe_records": ("/invocations",
                                 lambda v: {"dataframe_records": [dict(zip(NAMES, _numeric_row(v), strict=True))]},
                                 200),
    "mlflow inputs": ("/invocations", lambda v: {"inputs": {n: [x] for n, x in zip(NAMES, _numeric_row(v),
                                                                                   strict=True)}}, 200),
    "mlflow instances": ("/invocations",
                         lambda v: {"instances": [dict(zip(NAMES, _numeric_row(v), strict=True))]}, 200),
    "oip 2-D INT64": ("/v2/models/churn/infer", lambda v: {"inputs": [{"name": "input", "datatype": "INT64",
                                                                       "shape": [1, len(NAMES)],
                                                                       "data": _numeric_row(v)}]}, 200),
    "oip per feature INT64": ("/v2/models/churn/infer", _oip_feature_tensors, 200),
}


def _send(client, path: str, body: Any) -> tuple[int, str]:
    resp = client.post(path, data=json.dumps(body), content_type="application/json")
    return resp.status_code, resp.get_data(as_text=True)


@pytest.mark.parametrize("value", INSIDE, ids=["min", "max"])
@pytest.mark.parametrize("protocol", list(BODIES))
def test_int64_bounds_themselves_are_scored(client, protocol: str, value: int) -> None:
    path, body, accepted = BODIES[protocol]
    status, text = _send(client, path, body(value))
    assert status == accepted, text


@pytest.mark.parametrize("value", OUTSIDE, ids=["min-1", "max+1"])
@pytest.mark.parametrize("protocol", list(BODIES))
def test_one_beyond_int64_is_a_4xx_naming_the_feature(client, protocol: str, value: int) -> None:
    path, body, _ = BODIES[protocol]
    status, text = _send(client, path, body(value))
    assert 400 <= status < 500 and FEATURE in text, (status, text)


def _binary_infer(client, datatype: str, value: int) -> int:
    """OIP's binary tensor extension: every feature a 1-element tensor of `datatype` (categories as BYTES)."""
    packing = {"INT64": "<q", "UINT64": "<Q"}[datatype]
    inputs, blobs = [], []
    for f, v in zip(SPEC.features, _numeric_row(value), strict=True):
        if f.type == "category":
            text = f.categories[0].encode()
            blob, dt = struct.pack("<I", len(text)) + text, "BYTES"
        else:
            blob, dt = struct.pack(packing, v), datatype
        inputs.append({"name": f.name, "datatype": dt, "shape": [1], "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = json.dumps({"inputs": inputs}).encode()
    resp = client.post("/v2/models/churn/infer", data=head + b"".join(blobs), content_type="application/octet-stream",
                       headers={"Inference-Header-Content-Length": str(len(head))})
    return resp.status_code


def test_oip_binary_tensors_at_the_bounds(client) -> None:
    assert _binary_infer(client, "INT64", INT64_MIN) == 200
    assert _binary_infer(client, "INT64", INT64_MAX) == 200
    assert _binary_infer(client, "UINT64", INT64_MAX) == 200  # 2**63 - 1 as a uint64: no float on the way
    assert _binary_infer(client, "UINT64", INT64_MAX + 1) == 400


# --- the encoder itself: every input form it takes -----------------------------------------------------------

def _record(value: Any) -> dict[str, Any]:
    return {**RECORD, FEATURE: value}


def _columns(values: Any) -> dict[str, Any]:
    cols = {n: [RECORD[n]] * len(values) for n in NAMES}
    cols[FEATURE] = values
    return cols


@pytest.mark.parametrize("value", INSIDE)
def test_encoder_takes_the_bounds_in_every_form(value: int) -> None:
    for data in ([_record(value)], _columns([value]), _columns(np.array([value], dtype=np.int64)),
                 pd.DataFrame([_record(value)])):
        assert encode(SPEC, data).matrix[0, COL] == np.float32(value)


@pytest.mark.parametrize("value", OUTSIDE)
def test_encoder_refuses_one_beyond_in_every_form(value: int) -> None:
    forms = [[_record(value)], _columns([value]), _columns([value, 1]), pd.DataFrame([_record(value)])]
    if value > 0:
        forms.append(_columns(np.array([value], dtype=np.uint64)))  # pandas' dtype for it in a frame
    for data in forms:
        with pytest.raises(WrongTypeError, match=f"{FEATURE}.*expects an integer, got {value}"):
            encode(SPEC, data)


def test_floats_are_checked_as_floats() -> None:
    """+-2.0**63, the doubles nearest the bounds (what an int64 maximum becomes in a double), are integers an
    int feature takes; the next doubles out are not."""
    for value in (-(2.0**63), 2.0**63):
        assert encode(SPEC, [_record(value)]).matrix[0, COL] == np.float32(value)
    for value in (np.nextafter(2.0**63, np.inf), np.nextafter(-(2.0**63), -np.inf)):
        with pytest.raises(WrongTypeError, match=FEATURE):
            encode(SPEC, [_record(float(value))])
        with pytest.raises(WrongTypeError, match=FEATURE):
            encode_columns(SPEC, _columns(np.array([value])))


def test_json_ints_are_checked_by_the_name_they_come_under() -> None:
    """check_json_ints (MLflow's documents): an int feature's name, a split table's column or no name at all
    refuses an integer beyond int64; a float feature's name takes it as a number."""
    wide = INT64_MAX + 1
    for doc in ({"dataframe_records": [{FEATURE: wide}]}, {"inputs": {FEATURE: [wide]}},
                {"dataframe_split": {"columns": NAMES, "data": [_numeric_row(wide)]}}):
        with pytest.raises(WrongTypeError, match=f"feature '{FEATURE}' expects an integer, got {wide}"):
            check_json_ints(SPEC, doc)
    with pytest.raises(WrongTypeError, match=f"64 bits, got {wide}"):
        check_json_ints(SPEC, {"instances": [[wide]]})
    check_json_ints(SPEC, {"dataframe_records": [{"monthly_charges": 10**30, FEATURE: INT64_MAX}]})
    check_json_ints(SPEC, {"dataframe_split": {"columns": NAMES, "data": [_numeric_row(INT64_MIN)]}})
    # columns that are not names (a fuzzer's lists and objects) name nothing: positional, still checked
    with pytest.raises(WrongTypeError, match=f"64 bits, got {wide}"):
        check_json_ints(SPEC, {"dataframe_split": {"columns": [[FEATURE], {"a": 1}], "data": [[wide, 1]]}})


def test_reject_mode_keeps_the_row_beyond_the_bound() -> None:
    encoded = encode_columns(SPEC, _columns([INT64_MAX, INT64_MAX + 1, INT64_MIN - 1, INT64_MIN]), reject=True)
    assert encoded.valid.tolist() == [True, False, False, True]
    assert [e.row for e in encoded.rejects] == [1, 2]
