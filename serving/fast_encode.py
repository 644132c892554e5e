"""JSON records -> columns for the shared encoder, without pandas on the per-request path.

`scoring.encoding` codes category strings through pandas' Categorical, which costs ~0.3 ms per column for a
single row. Here category columns whose values are all known strings (or null) are turned into their integer
codes first — a form the encoder accepts as is — so the encoder takes its numpy path. Any other column is
passed through untouched, so every error (and every valid result) is exactly what the encoder gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scoring.encoding import records_to_columns
from scoring.spec import ModelSpec


def category_maps(spec: ModelSpec) -> dict[str, Any]:
    """Per feature: a category's value -> code map, or the feature type ('int' / 'float') for numbers."""
    return {f.name: ({c: float(i) for i, c in enumerate(f.categories)} if f.type == "category" else f.type)
            for f in spec.features}


def _numbers(values: list[Any], want_int: bool) -> np.ndarray | None:
    """float64 values when every value is a plain JSON number of the right kind (or null), else None."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        kind = type(v)
        if kind is int or (kind is float and not want_int):
            out[i] = v
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
