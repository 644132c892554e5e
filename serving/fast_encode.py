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


def category_maps(spec: ModelSpec) -> dict[str, dict[str, float]]:
    return {f.name: {c: float(i) for i, c in enumerate(f.categories)} for f in spec.features if f.type == "category"}


def records_to_fast_columns(records: Sequence[Mapping[str, Any]], maps: dict[str, dict[str, float]]
                            ) -> dict[str, Any]:
    columns: dict[str, Any] = records_to_columns(records)
    for name, codes in maps.items():
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
