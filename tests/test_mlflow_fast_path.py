"""/invocations' direct path for plain numeric payloads gives exactly what MLflow's own parsing gives.

MLflow's path here is its real functions (the ones `mlflow models serve` runs): JSON decoding, data/params split,
schema parsing and prediction-input validation against the model's signature.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from mlflow.pyfunc import _validate_prediction_input
from mlflow.pyfunc.scoring_server import _decode_json_input, _split_data_and_params, infer_and_parse_data

from scoring.encoding import InputError, encode
from serving.protocols.mlflow import input_schema, plain_numeric_matrix


def mlflow_frame(raw: str, spec):
    payload, _ = _split_data_and_params(_decode_json_input(raw))
    frame, _ = _validate_prediction_input(infer_and_parse_data(payload, input_schema(spec)), None,
                                          input_schema(spec), None, "mlflow.xgboost")
    return frame


def random_row(spec, rng: random.Random) -> list:
    row = []
    for f in spec.features:
        if f.type == "category":
            row.append(rng.randrange(len(f.categories)) + rng.choice([0, 0.0]))  # codes, as int or float
        elif f.type == "int":
            # int64's ends round as doubles (2**63 - 1 -> 2.0**63) on both paths alike; beyond them: the next test
            row.append(rng.choice([0, 1, -3, 2**40, 2**63 - 1, -(2**63), rng.randrange(-10**6, 10**6)]))
        else:
            row.append(rng.choice([0.1, -0.0, 1e-300, 3.4e38, 1e300, 7, rng.uniform(-1e6, 1e6),
                                   rng.random() * 10 ** rng.randrange(-20, 20)]))
    return row


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # MLflow casts 1e300 to float32 too
@pytest.mark.parametrize("name", ["churn", "spend"])
def test_direct_path_equals_mlflow_parsing(specs, name):
    spec = specs[name]
    names = spec.feature_names
    rng = random.Random(7)
    for trial in range(60):
        rows = [random_row(spec, rng) for _ in range(rng.choice([1, 2, 17]))]
        if trial % 2:
            raw = json.dumps({"dataframe_split": {"columns": names, "data": rows}})
        else:
            raw = json.dumps({"dataframe_records": [dict(zip(reversed(names), reversed(r), strict=True))
                                                    for r in rows]})
        direct = plain_numeric_matrix(raw.encode(), names)
        assert direct is not None, raw
        frame = mlflow_frame(raw, spec)
        assert list(frame.columns) == names and direct.dtype == np.float64
        assert np.array_equal(frame.to_numpy(np.float64), direct), raw
        # and so the scorer's matrix (or the 4xx for a value beyond float32) is the same, whichever way it came
        via_mlflow, via_direct = encoded(spec, frame), encoded(spec, direct)
        if isinstance(via_mlflow, str) or isinstance(via_direct, str):
            assert via_mlflow == via_direct, raw
        else:
            assert np.array_equal(via_mlflow, via_direct, equal_nan=True)


def encoded(spec, data) -> np.ndarray | str:
    try:
        return encode(spec, data, allow_extra=True).matrix
    except InputError as exc:
        return str(exc)


@pytest.mark.parametrize("case", ["null", "nan", "bool", "string", "params", "index", "order", "ragged", "empty",
                                  "missing key", "extra key", "instances", "not json", "list", "huge int",
                                  "beyond int64"])
def test_everything_else_goes_through_mlflow(specs, case):
    spec = specs["churn"]
    names = spec.feature_names
    row = random_row(spec, random.Random(1))
    split = {"columns": names, "data": [row]}
    record = dict(zip(names, row, strict=True))
    docs = {
        "null": {"dataframe_split": {**split, "data": [[None, *row[1:]]]}},
        "nan": {"dataframe_split": {**split, "data": [[float("nan"), *row[1:]]]}},
        "bool": {"dataframe_split": {**split, "data": [[True, *row[1:]]]}},
        "string": {"dataframe_split": {**split, "data": [["1", *row[1:]]]}},
        "params": {"dataframe_split": split, "params": {"a": 1}},
        "index": {"dataframe_split": {**split, "index": [0]}},
        "order": {"dataframe_split": {"columns": names[::-1], "data": [row[::-1]]}},
        "ragged": {"dataframe_split": {**split, "data": [row, row[:-1]]}},
        "empty": {"dataframe_split": {**split, "data": []}},
        "missing key": {"dataframe_records": [{k: v for k, v in record.items() if k != names[0]}]},
        "extra key": {"dataframe_records": [{**record, "zzz": 1}]},
        "instances": {"instances": [record]},
        "list": [record],
        "huge int": {"dataframe_split": {**split, "data": [[10**400, *row[1:]]]}},
        # checked as sent on the slow path (encoding.check_json_ints): as a double it would round onto the bound
        "beyond int64": {"dataframe_split": {**split, "data": [[2**63, *row[1:]]]}},
    }
    raw = b"{not json" if case == "not json" else json.dumps(docs[case]).encode()
    assert plain_numeric_matrix(raw, names) is None
