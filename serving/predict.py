"""The one prediction function every protocol and the async worker go through, with no HTTP in it.

Features come in already decoded by the protocol (records, named columns or a matrix in feature order); here:
the row limit, the loaded version (taken once: a swap mid-request cannot mix versions), the entity keys split
and checked once, encoding, scoring, the row counter and a sample to the payload log. Failures go out as the
typed exceptions of serving/failures.py and the encoder's InputError; each protocol maps them to its own error
shape in one place. A live request's path from a protocol's view to the scorer: this module, serving/values.py
(entity keys), scoring/encoding.py, scoring/scorer.py, and serving/payload_log.py when the row is sampled.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scoring.scorer import Contributions, ExplainRequest, Predictions, Scorer
from scoring.spec import ModelSpec
from serving.failures import ExplainNotAllowed, ModelNotLoaded, TooMany, VersionNotLoaded
from serving.metrics import ROWS, VERSION_ROWS
from serving.model_holder import ModelHolder
from serving.payload_log import PayloadLog, Sampled
from serving.values import split_entity_key


@dataclass(frozen=True)
class Scored:
    """One call's answer: the version that scored it, the predictions, the entity keys the records carried and,
    when asked, each row's reasons (its top-k contributions)."""

    version: str
    predictions: Predictions
    ids: list[Any] | None = None
    contributions: Contributions | None = None  # asked with `explain`: every row's, from the scored matrix
    top_k: int | None = None  # how many of a row's contributions its reasons keep (None: all)

    @property
    def reasons(self) -> list[dict[str, Any]] | None:
        return None if self.contributions is None else self.contributions.records(self.top_k)

    def items(self, key: str) -> list[dict[str, Any]]:
        """One dict per row (with its "explanation" when asked), echoing the row's entity key (named `key`) when
        it carried one."""
        items = self.predictions.records()
        reasons = self.reasons
        if reasons is not None:
            for item, reason in zip(items, reasons, strict=True):
                item["explanation"] = reason
        if self.ids is not None:
            for item, e in zip(items, self.ids, strict=True):
                if e is not None:
                    item[key] = e
        return items


class Predictor:
    def __init__(self, spec: ModelSpec, holder: ModelHolder, *, max_rows: int | None,
                 payloads: PayloadLog | None = None, source: str | None = "live") -> None:
        self.spec = spec
        self.holder = holder
        self.entity_key = spec.source.entity_key
        self.max_rows = max_rows  # None: no limit (the async worker: jobs were bounded at submit)
        self.payloads = payloads  # the sampled payload log of live scoring (None: off)
        # the hot path's row counter, labels resolved once (source None: not counted, e.g. the async worker, which
        # serves no /metrics)
        self._rows = ROWS.labels(spec.name, source) if source is not None else None
        self._version_rows: dict[str, Any] = {}  # version -> its VERSION_ROWS child (labels resolved once)

    def scorer(self, version: str | None = None) -> Scorer:
        """The loaded version (`version`: the one the request names, which must be it)."""
        scorer = self.holder.current
        if scorer is None:
            detail = self.holder.stats.last_error or "not loaded yet"
            raise ModelNotLoaded(f"model '{self.spec.name}' has no loaded version: {detail}")
        if version is not None and version != scorer.version:
            raise VersionNotLoaded(f"model '{self.spec.name}' version {version} is not loaded "
                                   f"(loaded: {scorer.version})")
        return scorer

    def check_rows(self, n: int) -> None:
        if self.max_rows is not None and n > self.max_rows:
            raise TooMany("too_many_rows", f"{n} rows in one request; the limit is {self.max_rows} (SERVING_MAX_ROWS)")

    def split(self, records: Sequence[Mapping[str, Any]]) -> tuple[Sequence[Mapping[str, Any]], list[Any] | None]:
        """(features, entity keys or None): the row limit and the keys checked, before any model is needed."""
        self.check_rows(len(records))
        return split_entity_key(records, self.entity_key)

    def predict(self, features: Any, *, route: str, n_rows: int | None = None, ids: list[Any] | None = None,
                version: str | None = None, allow_extra: bool = False, request_id: str | None = None,
                scorer: Scorer | None = None, explain: ExplainRequest | None = None) -> Scored:
        """Score `features` (entity keys already split off, see `split`; any form scoring.encoding.encode takes).
        `n_rows`: the row count when `features` is not a sequence of rows; `allow_extra`: ignore unknown columns
        (MLflow's protocol); `scorer`: a version taken earlier (the worker's, one per batch); `explain`: each
        row's reasons too, from the same matrix."""
        self.check_rows(len(features) if n_rows is None else n_rows)
        if scorer is None:
            scorer = self.scorer(version)
        matrix = scorer.encode(features, allow_extra=allow_extra).matrix
        contributions = None
        if explain is not None:  # a refusal comes before any scoring (and any payload sample)
            contributions = self.contributions(scorer, matrix, explain.method)
        preds = scorer.predict_matrix(matrix)
        payloads = self.payloads
        if payloads is not None and payloads.sampled():  # a sample is handed over, written elsewhere (no I/O here)
            payloads.offer(Sampled(time.time(), scorer.version, route, request_id, matrix, preds, ids))
        if self._rows is not None:
            self._rows.inc(len(preds))
            by_version = self._version_rows.get(scorer.version)
            if by_version is None:
                by_version = self._version_rows[scorer.version] = VERSION_ROWS.labels(self.spec.name, scorer.version)
            by_version.inc(len(preds))
        return Scored(scorer.version, preds, ids, contributions, explain.top_k if explain is not None else None)

    def contributions(self, scorer: Scorer, matrix: Any, method: str) -> Contributions:
        """The rows' contributions; exact ones only when the gate found them within the latency budget."""
        if method == "exact" and scorer.explain_online is False:
            raise ExplainNotAllowed(
                f"model '{self.spec.name}' version {scorer.version} may not explain online with exact reasons: "
                f"they took p99 {scorer.explain_p99_ms:.1f} ms at the gate, over the latency budget of "
                f"{self.spec.serving.latency_budget_ms:g} ms; ask for \"method\": \"approx\" or read the nightly "
                f"reasons (GET .../predictions/<id>?explain=true)", column="explain")
        return scorer.contributions(matrix, method)

    def predict_records(self, records: Sequence[Mapping[str, Any]], *, route: str, request_id: str | None = None,
                        scorer: Scorer | None = None, explain: ExplainRequest | None = None) -> Scored:
        """Records that may carry the entity key: split, checked and scored."""
        features, ids = self.split(records)
        return self.predict(features, route=route, ids=ids, request_id=request_id, scorer=scorer, explain=explain)
