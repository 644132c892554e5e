"""Checks and display of a client's values that every protocol shares, with no HTTP in them: the entity key (a
64-bit integer, what the key column and the job queue store) and a value shown in a message."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from scoring.encoding import INT64_MAX, INT64_MIN, InputError


class InvalidEntityKey(InputError):
    kind = "invalid_entity_key"


def is_bigint(value: Any) -> bool:
    """Whether `value` is an int PostgreSQL's bigint holds (the entity key column's type); bools are not ints here."""
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def split_entity_key(records: Sequence[Mapping[str, Any]], key: str | None
                     ) -> tuple[Sequence[Mapping[str, Any]], list[Any] | None]:
    """Records may carry the model's entity key (to tell results apart); it is not a feature, so it is set aside
    before scoring and echoed in each prediction: (features, keys or None when no record carries one). A key, when
    present, is a 64-bit integer or null (a NaN or a string with NUL would be neither storable nor JSON)."""
    if not key or not any(key in rec for rec in records):
        return records, None
    ids = [rec.get(key) for rec in records]
    for i, value in enumerate(ids):
        if value is not None and not is_bigint(value):
            raise InvalidEntityKey(f"row {i}: '{key}' must be a 64-bit integer or null, got {shown(value)}",
                                   column=key, row=i)
    return [{k: v for k, v in rec.items() if k != key} for rec in records], ids


def shown(value: Any) -> str:
    """A client's value in a message as the client wrote it (JSON), cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
