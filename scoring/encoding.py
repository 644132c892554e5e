"""Input validation and conversion: every way features arrive becomes one float32 matrix here.

Batch (numpy columns from COPY), online (JSON records) and async (stored records) all pass through
`encode_columns`, so the same features always become the same matrix and the same prediction.

Category features are encoded as the integer position of the value in the spec's category list; a value may
arrive as that string or as the integer code itself (the form the logged MLflow model's signature takes).
Missing values become NaN, which XGBoost treats as "missing".
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scoring.spec import Feature, ModelSpec


class InputError(ValueError):
    """Input the model cannot score. `column` and `row` say where (row is 0-based within the input)."""

    kind = "invalid_input"

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.row = row


class MissingColumnError(InputError):
    kind = "missing_column"


class UnknownColumnError(InputError):
    kind = "unknown_column"


class WrongTypeError(InputError):
    kind = "wrong_type"


class UnknownCategoryError(InputError):
    kind = "unknown_category"


class NullValueError(InputError):
    kind = "null_value"


@dataclass
class Encoded:
    """The matrix of the rows that passed, and a reason for each row that did not."""

    matrix: np.ndarray  # float32, shape (valid rows, features), spec feature order
    valid: np.ndarray  # bool mask over the input rows
    rejects: list[InputError]  # one per invalid row (its first problem)

    @property
    def n_rejected(self) -> int:
        return len(self.rejects)


def _is_null(value: Any) -> bool:
    # None (JSON null), NaN of any float type, and pandas' NA (nullable dtypes, string arrays).
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and value != value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


# The matrix is float32: a value beyond its range would become inf (or a huge int an overflow), not a feature.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# An int feature's values are what a bigint column holds. An integer is checked as sent, before any float
# conversion: as floats -2**63 - 1 and 2**63 would round onto the bounds. A float is checked as a float: +-2.0**63
# are the floats nearest the bounds (2**63 - 1 is no float), what a client's int64 maximum becomes as a double.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INT64_FLOAT = 2.0 ** 63


def is_int64(value: Any) -> bool:
    """Whether `value` is an integer (Python or numpy, not bool) that a 64-bit signed integer holds."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
        and INT64_MIN <= int(value) <= INT64_MAX


def _whole_int64(value: Any) -> bool:
    """An int feature's value: an int64 integer, or a float with an integral value in int64's range."""
    if isinstance(value, (float, np.floating)):
        return float(value).is_integer() and abs(float(value)) <= _INT64_FLOAT
    return is_int64(value)


def _fits(value: Any) -> bool:
    """A finite number the float32 matrix can hold (False for inf, NaN and integers beyond float's range)."""
    try:
        return abs(float(value)) <= _FLOAT32_MAX
    except OverflowError:
        return False


def check_json_ints(spec: ModelSpec, doc: Any) -> None:
    """The integers of a decoded JSON document checked as sent, for a protocol whose parser turns every number
    into a float before the encoder sees it (MLflow's, by its all-double signature). An integer beyond int64
    under an int or category feature's name, or where no feature name says what it is (positional rows), raises
    WrongTypeError; under a float feature's name it is a number like any other. Names come from object keys and,
    for a split-orient table ({"columns": [...], "data": [[...]]}), from the columns."""
    names, floats = set(spec.feature_names), {f.name for f in spec.features if f.type == "float"}
    todo: deque[tuple[Any, str | None]] = deque([(doc, None)])  # first in, first out: the first problem is named
    while todo:
        node, name = todo.popleft()
        if type(node) is int:
            if not INT64_MIN <= node <= INT64_MAX and name not in floats:
                what = f"feature '{name}' expects an integer" if name else "an integer must fit 64 bits"
                raise WrongTypeError(f"{what}, got {node}", column=name)
        elif isinstance(node, dict):
            columns, rows = node.get("columns"), node.get("data")
            split = isinstance(columns, list) and isinstance(rows, list)
            for key, value in node.items():
                if split and key == "data":
                    named = [c if isinstance(c, str) and c in names else None for c in columns]  # any JSON value
                    todo.extend((v, named[j] if j < len(named) else None)
                                for row in rows for j, v in enumerate(row if isinstance(row, list) else [row]))
                else:
                    todo.append((value, key if key in names else name))
        elif isinstance(node, list):
            todo.extend((v, name) for v in node)


def _numeric_column(feature: Feature, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """float64 values, a mask of rows with a wrong type, and the reason text."""
    if values.dtype.kind in "iuf":
        out = values.astype(np.float64, copy=False)
        if values.dtype.kind == "f":
            finite = np.isfinite(out)
            bad = ~finite & ~np.isnan(out) | (np.abs(np.where(finite, out, 0)) > _FLOAT32_MAX)  # NaN: missing
            if feature.type == "int":  # a whole number a 64-bit integer column can hold
                bad |= finite & ((out != np.floor(np.where(finite, out, 0))) | (np.abs(out) > _INT64_FLOAT))
                return out, bad, f"feature '{feature.name}' expects an integer"
            return out, bad, f"feature '{feature.name}' expects a finite number"
        if values.dtype.kind == "u" and feature.type == "int":  # a uint64 beyond int64 (compared as integers)
            return out, values > np.uint64(INT64_MAX), f"feature '{feature.name}' expects an integer"
        return out, np.zeros(len(out), dtype=bool), ""
    if values.dtype.kind == "b":
        reason = f"feature '{feature.name}' expects a number, got a boolean"
        return values.astype(np.float64), np.ones(len(values), dtype=bool), reason
    out = np.empty(len(values), dtype=np.float64)
    bad = np.zeros(len(values), dtype=bool)
    want_int = feature.type == "int"
    for i, v in enumerate(values):
        if _is_null(v):
            out[i] = np.nan
        elif not _is_number(v) or not _fits(v) or (want_int and not _whole_int64(v)):
            bad[i] = True
            out[i] = np.nan
        else:
            out[i] = float(v)
    kind = "an integer" if want_int else "a finite number"
    return out, bad, f"feature '{feature.name}' expects {kind}"


_MISSING = object()


@functools.lru_cache(maxsize=1024)
def _category_codes(feature: Feature) -> dict[str, float]:
    return {c: float(i) for i, c in enumerate(feature.categories)}


_EXACT = 2.0 ** 53  # integers beyond this would round as floats: left to the column path, which checks them


def _plain_records_matrix(spec: ModelSpec, records: Sequence[Any]) -> np.ndarray | None:
    """The matrix for records of plain valid JSON values, or None to take the column path.

    The single-row hot path of live and async serving: records whose keys are exactly the features and whose
    values are ints for int features, numbers for float features, known category strings, or null where the
    feature is nullable are written straight into the matrix, with the same conversions (float64 -> float32,
    category -> its code, null -> NaN) as the column path. Anything else returns None, and the column path gives
    the same matrix or its typed error (tests/test_encoding.py checks both paths agree).
    """
    features = spec.features
    n = len(features)
    matrix = np.empty((len(records), n), dtype=np.float32)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or len(rec) != n:
            return None
        for j, f in enumerate(features):
            v = rec.get(f.name, _MISSING)
            kind = type(v)
            if v is None or (kind is float and v != v):
                if not f.nullable:
                    return None
                matrix[i, j] = math.nan
            elif f.type == "category":
                code = _category_codes(f).get(v) if kind is str else None
                if code is None:
                    return None
                matrix[i, j] = code
            elif (kind is int and -_EXACT < v < _EXACT) or (kind is float and f.type == "float"
                                                            and -_FLOAT32_MAX <= v <= _FLOAT32_MAX):
                matrix[i, j] = float(v)
            else:  # a missing key, a bool, a string, 1.5 for an int, ...
                return None
    return matrix


def _category_column(feature: Feature, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    n_cat = len(feature.categories)
    if values.dtype.kind in "iu" or (values.dtype.kind == "f"):
        codes = values.astype(np.float64)
        finite = np.isfinite(codes)
        bad = np.isinf(codes) | (finite & ((codes < 0) | (codes >= n_cat)
                                           | (codes != np.floor(np.where(finite, codes, 0)))))
        return codes, bad, f"feature '{feature.name}' expects one of {list(feature.categories)}"
    if len(values) <= 64:
        # Few rows (online requests): a dict lookup per value beats building a pandas Categorical (~0.3 ms).
        codes_map = _category_codes(feature)
        codes_int = np.fromiter((codes_map.get(v, -1) if isinstance(v, str) else -1 for v in values),
                                dtype=np.int64, count=len(values))
    else:
        # Strings (the usual case): vectorised through pandas' categorical coder; -1 marks unknown or null.
        codes_int = _categorical_codes(feature, values)
    codes = codes_int.astype(np.float64)
    null = pd.isna(values)
    unknown = (codes_int == -1) & ~null
    codes[codes_int == -1] = np.nan
    if unknown.any():
        # A non-string value may still be a valid integer code (records mixing both forms).
        for i in np.flatnonzero(unknown):
            v = values[i]
            if _is_number(v) and 0 <= v < n_cat and float(v).is_integer():
                codes[i] = float(v)
                unknown[i] = False
    return codes, unknown, f"feature '{feature.name}' expects one of {list(feature.categories)}"


def _categorical_codes(feature: Feature, values: np.ndarray) -> np.ndarray:
    try:
        codes_int = pd.Categorical(values, categories=list(feature.categories)).codes
    except TypeError:  # an unhashable value (a list or an object from JSON): code it as unknown, checked below
        hashable = np.array([v if isinstance(v, (str, int, float, type(None))) else "\x00" for v in values],
                            dtype=object)
        codes_int = pd.Categorical(hashable, categories=list(feature.categories)).codes
    return np.asarray(codes_int, dtype=np.int64)


def _error_for(feature: Feature, row: int, value: Any, reason: str, null: bool) -> InputError:
    if null:
        return NullValueError(f"row {row}: feature '{feature.name}' must not be null", column=feature.name, row=row)
    if feature.type == "category" and isinstance(value, str):
        return UnknownCategoryError(f"row {row}: unknown category {value!r}; {reason}", column=feature.name, row=row)
    if isinstance(value, np.generic):  # as the client wrote it: 3.0, not np.float64(3.0)
        value = value.item()
    return WrongTypeError(f"row {row}: {reason}, got {value!r}", column=feature.name, row=row)


def encode_columns(spec: ModelSpec, columns: Mapping[str, Any], *, reject: bool = False,
                   allow_extra: bool = False) -> Encoded:
    """Validate and convert named columns (numpy arrays, lists or pandas Series) into the model's matrix.

    With reject=False the first problem raises an InputError; with reject=True invalid rows are dropped from
    the matrix and reported in `rejects` (the batch job keeps them in ops.prediction_rejects).
    """
    names = spec.feature_names
    missing = [n for n in names if n not in columns]
    if missing:
        raise MissingColumnError(f"missing feature column '{missing[0]}' (model '{spec.name}' needs {names})",
                                 column=missing[0])
    if not allow_extra:
        extra = sorted(set(columns) - set(names))
        if extra:
            raise UnknownColumnError(f"unknown column '{extra[0]}' (model '{spec.name}' takes {names})",
                                     column=extra[0])
    for name in names:  # a mapping of scalars is one record, not columns: say so instead of failing obscurely
        col = columns[name]
        if isinstance(col, (str, bytes, Mapping)) or not hasattr(col, "__len__") or getattr(col, "ndim", 1) != 1:
            raise InputError(f"column '{name}' must be a 1-D list of values, got {type(col).__name__} "
                             f"(pass a single record as a list of one object)", column=name)
    n_rows = len(columns[names[0]])
    matrix = np.empty((n_rows, len(names)), dtype=np.float32)
    invalid = np.zeros(n_rows, dtype=bool)
    first_error: dict[int, InputError] = {}
    for j, feature in enumerate(spec.features):
        raw = columns[feature.name]
        if isinstance(raw, pd.Series):
            values = raw.to_numpy()
        else:  # plain lists become object arrays so that mixed JSON values are checked one by one
            # (fromiter: a value that is itself a list stays one bad value instead of a second dimension)
            values = raw if isinstance(raw, np.ndarray) else np.fromiter(raw, dtype=object, count=len(raw))
        if len(values) != n_rows:
            raise InputError(f"column '{feature.name}' has {len(values)} rows, expected {n_rows}", column=feature.name)
        if feature.type == "category":
            col, bad, reason = _category_column(feature, values)
        else:
            col, bad, reason = _numeric_column(feature, values)
        nulls = np.isnan(col) & ~bad
        bad_null = nulls if not feature.nullable else np.zeros(n_rows, dtype=bool)
        problem = bad | bad_null
        if problem.any():
            rows = np.flatnonzero(problem & ~invalid)
            if not reject:
                row = int(rows[0]) if len(rows) else int(np.flatnonzero(problem)[0])
                raise _error_for(feature, row, values[row], reason, bool(bad_null[row]))
            for row in rows:
                first_error[int(row)] = _error_for(feature, int(row), values[row], reason, bool(bad_null[row]))
            invalid |= problem
        matrix[:, j] = col
    if invalid.any():
        valid = ~invalid
        return Encoded(matrix[valid], valid, [first_error[r] for r in sorted(first_error)])
    return Encoded(matrix, ~invalid, [])


def records_to_columns(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """JSON records -> columns. Every record must carry the same keys (a missing key is a missing value,
    reported as such by the encoder if the feature is not nullable)."""
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise InputError("records must be a list of objects")
    if not records:
        raise InputError("records must not be empty")
    keys: dict[str, None] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise InputError(f"row {i}: each record must be an object, got {type(rec).__name__}", row=i)
        keys.update(dict.fromkeys(rec))
    return {k: [rec.get(k) for rec in records] for k in keys}


def encode(spec: ModelSpec, data: Any, *, reject: bool = False, allow_extra: bool = False) -> Encoded:
    """Any accepted input form -> Encoded. Forms: DataFrame, list of records, mapping of columns,
    or a 2-D array whose columns are in the spec's feature order."""
    if isinstance(data, pd.DataFrame):
        columns: Mapping[str, Any] = {str(c): data[c] for c in data.columns}
    elif isinstance(data, np.ndarray):
        if data.ndim != 2 or data.shape[1] != len(spec.features):
            raise InputError(f"array input must be 2-D with {len(spec.features)} columns "
                             f"in the order {spec.feature_names}, got shape {data.shape}")
        columns = {name: data[:, j] for j, name in enumerate(spec.feature_names)}
    elif isinstance(data, Mapping):
        columns = data
    else:
        if isinstance(data, list) and data and not allow_extra:
            matrix = _plain_records_matrix(spec, data)
            if matrix is not None:
                return Encoded(matrix, np.ones(len(matrix), dtype=bool), [])
        columns = records_to_columns(data)
    return encode_columns(spec, columns, reject=reject, allow_extra=allow_extra)
