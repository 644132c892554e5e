"""Small helpers about model versions."""

from __future__ import annotations


def version_number(version: str | None) -> float:
    """A registry version as a number for a gauge (0 when none or not numeric)."""
    try:
        return float(version) if version is not None else 0.0
    except ValueError:
        return 0.0
