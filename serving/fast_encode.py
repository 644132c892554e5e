"""JSON records -> the model matrix, exactly as the shared encoder builds it, without its per-request overhead.

`encode_records` (the live hot path) writes rows of plain valid values straight into the float32 matrix and
hands anything else to `scoring.encoding`, which then gives the same matrix or raises its typed error.
`records_to_fast_columns` pre-codes category strings (pandas' Categorical costs ~0.3 ms per column for a single
row) and plain numbers into numpy columns the encoder accepts as is, for callers that go through the encoder.
tests/test_serving_encode.py checks both against `scoring.encoding.encode`: same matrices, same errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scoring.encoding import records_to_columns
from scoring.spec import ModelSpec

_EXACT = 2.0 ** 53  # integers beyond this are left to the encoder (float conversion would round them)


def category_maps(spec: ModelSpec) -> dict[str, Any]:
    """Per feature: a category's value -> code map, or the feature type ('int' / 'float') for numbers."""
    return {f.name: ({c: float(i) for i, c in enumerate(f.categories)} if f.type == "category" else f.type)
            for f in spec.features}


def _numbers(values: list[Any], want_int: bool) -> np.ndarray | None:
    """float64 values when every value is a plain JSON number of the right kind (or null), else None."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        kind = type(v)
        if (kind is int and -_EXACT < v < _EXACT) or (kind is float and not want_int and not math.isinf(v)):
            out[i] = v  # NaN is a null here, as in the encoder; infinities are left to the encoder
        elif v is None:
            out[i] = math.nan
        else:
            return None  # bool, str, 1.5 for an int, ...: the encoder's own path and messages
    return out


def records_to_fast_columns(records: Sequence[Mapping[str, Any]], maps: dict[str, Any]) -> dict[str, Any]:
    columns: dict[str, Any] = records_to_columns(records)
    for name, codes in maps.items():
        if isinstance(codes, str):
            values = columns.get(name)
            if values is not None:
                fast = _numbers(values, codes == "int")
                if fast is not None:
                    columns[name] = fast
            continue
        values = columns.get(name)
        if values is None:
            continue  # missing column: the encoder reports it
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            if v is None:
                out[i] = math.nan
            elif isinstance(v, str) and v in codes:
                out[i] = codes[v]
            else:
                break  # anything else (unknown, wrong type, an integer code): the encoder's own path
        else:
            columns[name] = out
    return columns



def encode_records(spec: ModelSpec, records: Sequence[Mapping[str, Any]], maps: dict[str, Any]) -> np.ndarray:
    """The model's float32 matrix for JSON records, exactly as `scoring.encoding.encode` builds it.

    Records whose keys are exactly the features and whose values are plain valid JSON values (ints for int
    features, numbers for float features, known category strings, null where the feature is nullable) are
    written straight into the matrix: the same float64 -> float32 conversions and category codes the encoder
    uses, without building columns (the single-row hot path). Anything else is handed to the encoder, which
    gives the matrix or raises its typed error.
    """
    features = spec.features
    n = len(features)
    matrix = np.empty((len(records), n), dtype=np.float32)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or len(rec) != n:
            return _via_encoder(spec, records, maps)
        for j, f in enumerate(features):
            try:
                v = rec[f.name]
            except KeyError:
                return _via_encoder(spec, records, maps)
            kind = type(v)
            if v is None or (kind is float and v != v):
                if not f.nullable:
                    return _via_encoder(spec, records, maps)
                matrix[i, j] = math.nan
            elif f.type == "category":
                code = maps[f.name].get(v) if kind is str else None
                if code is None:
                    return _via_encoder(spec, records, maps)
                matrix[i, j] = code
            elif (kind is int and -_EXACT < v < _EXACT) or (kind is float and f.type == "float" and not math.isinf(v)):
                matrix[i, j] = float(v)
            else:
                return _via_encoder(spec, records, maps)
    return matrix


def _via_encoder(spec: ModelSpec, records: Sequence[Mapping[str, Any]], maps: dict[str, Any]) -> np.ndarray:
    from scoring.encoding import encode_columns

    return encode_columns(spec, records_to_fast_columns(records, maps)).matrix
