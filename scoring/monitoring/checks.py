"""The monitor's checks: pure functions over counts and figures, each result judged against models.yaml's limits.

PSI (population stability index) of two histograms over the same bins, with p the reference proportions and
q today's:  PSI = sum_i (q_i - p_i) * ln(q_i / p_i).  An empty bin would make a term infinite, so every
proportion is floored at PSI_EPSILON (1e-4) first: a bin empty on both sides then adds exactly 0, and a bin empty
on one side adds a large but finite term. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from scoring.monitoring.profile import Histogram
from scoring.spec import Threshold

PSI_EPSILON = 1e-4
Status = Literal["ok", "warn", "alert", "info"]
_RANK = {"info": 0, "ok": 0, "warn": 1, "alert": 2}


def psi(reference: Sequence[float], actual: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """PSI of `actual` counts against `reference` counts over the same bins; NaN when either side is empty."""
    p = np.asarray(reference, dtype=np.float64)
    q = np.asarray(actual, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"psi: {len(p)} reference bins but {len(q)} actual bins")
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p = np.maximum(p / p.sum(), epsilon)
    q = np.maximum(q / q.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def histogram_psi(reference: Histogram, actual: Histogram) -> float:
    """PSI of the non-missing values of two histograms of one feature (same bins required)."""
    if reference.kind != actual.kind or list(reference.bins) != list(actual.bins):
        raise ValueError("psi: the histograms do not share their bins")
    return psi(reference.counts, actual.counts)


def relative_change(value: float, previous: float) -> float:
    """|value - previous| / previous (NaN without a previous value)."""
    if previous is None or previous <= 0:
        return float("nan")
    return abs(value - previous) / previous


def degradation(reference: float, realised: float, higher_is_better: bool) -> float:
    """How much worse `realised` is than `reference`, relative to it (0 or negative: as good or better)."""
    if reference == 0 or math.isnan(reference) or math.isnan(realised):
        return float("nan")
    loss = reference - realised if higher_is_better else realised - reference
    return loss / abs(reference)


@dataclass(frozen=True)
class CheckResult:
    """One row of the ops table: a check's value on a day and how it compares with its limits."""

    check: str
    value: float | None
    status: Status
    warn: float | None = None
    alert: float | None = None
    detail: str = ""

    @property
    def threshold(self) -> float | None:
        """The limit that decided the status: the alert limit once crossed, else the warn limit."""
        return self.alert if self.status == "alert" else self.warn

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        if self.status == "alert":
            return f"{self.check} = {value} >= alert threshold {self.alert:g}" + (f" ({self.detail})"
                                                                                   if self.detail else "")
        if self.status == "warn":
            return f"{self.check} = {value} >= warn threshold {self.warn:g}"
        return f"{self.check} = {value}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(**data)


def judge(check: str, value: float | None, limits: Threshold | None, detail: str = "") -> CheckResult:
    """A value against warn/alert limits (at or above a limit crosses it); no limits or no value -> info."""
    if value is not None and math.isnan(value):
        value = None
    if limits is None or value is None:
        return CheckResult(check, value, "info", limits.warn if limits else None, limits.alert if limits else None,
                           detail)
    status: Status = "alert" if value >= limits.alert else "warn" if value >= limits.warn else "ok"
    return CheckResult(check, float(value), status, limits.warn, limits.alert, detail)


def worst(results: Sequence[CheckResult]) -> Status:
    rank = max((_RANK[r.status] for r in results), default=0)
    return {0: "ok", 1: "warn", 2: "alert"}[rank]


def alerts(results: Sequence[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "alert"]


def score_agreement(champion: np.ndarray, challenger: np.ndarray, classifier: bool,
                    tolerance: float = 0.1) -> float:
    """Share of rows on which two versions agree: same class (classifiers, at 0.5) or within `tolerance`
    relative difference (regressors)."""
    if len(champion) == 0:
        return float("nan")
    if classifier:
        return float(np.mean((champion > 0.5) == (challenger > 0.5)))
    scale = np.maximum(np.abs(champion), 1e-9)
    return float(np.mean(np.abs(challenger - champion) / scale <= tolerance))
