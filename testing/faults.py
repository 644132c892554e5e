"""Faults tests inject by handing a wrapped scorer to the real code (production code reads no fault switch).

`FaultyScorer` stands in for a `scoring.scorer.Scorer`: everything is delegated to the real one, with a fault in
front of each scoring call (`predict_matrix`, which every path ends in, or `contributions` for the batch's
reasons) and a poison check where records are encoded (`encode`, which the serving prediction function calls
before it).
"""

from __future__ import annotations

import sys
import time
from typing import Any

STALL_MARKER = "fault: stalling"  # printed to stderr when a stall begins


class FaultyScorer:
    """The real scorer, but: stall `stall_s` seconds before scoring call number `stall_from_call` and every later
    one (1 = every call; with `explain_only` the calls counted are those of `contributions`); refuse
    (RuntimeError "injected fault: ...") any record whose feature `poison[0]` has the value `poison[1]` (records
    pass the door, then fail at scoring)."""

    def __init__(self, scorer: Any, *, stall_s: float = 0.0, stall_from_call: int = 1,
                 poison: tuple[str, Any] | None = None, explain_only: bool = False) -> None:
        self.scorer = scorer
        self.explain_only = explain_only
        self.stall_s = stall_s
        self.stall_from_call = stall_from_call
        self.poison = poison
        self.calls = 0

    def __getattr__(self, name: str) -> Any:  # spec, version, ... of the real scorer
        return getattr(self.__dict__["scorer"], name)

    def _before_call(self) -> None:
        self.calls += 1
        if self.stall_s > 0 and self.calls >= self.stall_from_call:
            print(f"{STALL_MARKER} {self.stall_s}s before scoring call {self.calls}", file=sys.stderr, flush=True)
            time.sleep(self.stall_s)

    def encode(self, data: Any, **kwargs: Any) -> Any:
        if self.poison is not None:
            feature, value = self.poison
            if any(rec.get(feature) == value for rec in data):
                raise RuntimeError(f"injected fault: poison record ({feature}={value!r})")
        return self.scorer.encode(data, **kwargs)

    def score(self, data: Any) -> Any:
        return self.predict_matrix(self.encode(data).matrix)

    def predict_matrix(self, matrix: Any) -> Any:
        if not self.explain_only:
            self._before_call()
        return self.scorer.predict_matrix(matrix)

    def contributions(self, matrix: Any, method: str = "exact") -> Any:
        """The batch's reasons (batch.explain); with explain_only the fault hits here, after the scores."""
        if self.explain_only:
            self._before_call()
        return self.scorer.contributions(matrix, method)
