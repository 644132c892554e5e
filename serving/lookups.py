"""Precomputed predictions as a service beside the prediction function: an entity's lookup (with a live
fallback on a miss) and v1 predict's cache-first mode. No HTTP: failures are serving/failures.py's."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from scoring.scorer import ExplainRequest
from serving.failures import NotFound, StoreUnavailable
from serving.lookup_queries import Precomputed
from serving.metrics import ROWS
from serving.predict import Predictor


class LookupSource(Protocol):
    """What lookups need from the database (serving/lookup_queries.py; an in-memory fake in route tests)."""

    def latest_date(self) -> dt.date | None: ...
    def latest_features(self, entity_id: int) -> tuple[dt.date, dict[str, Any]] | None: ...
    def get_many(self, entity_ids: list[int], day: dt.date) -> dict[int, Precomputed]: ...
    def document(self, entity_id: int, day: dt.date) -> bytes | None: ...
    def reasons(self, entity_id: int, day: dt.date) -> list[dict[str, Any]]: ...


class Lookups:
    def __init__(self, predictor: Predictor, source: LookupSource) -> None:
        self.predictor = predictor
        self.spec = predictor.spec
        self.source = source
        self._rows = ROWS.labels(self.spec.name, "precomputed")

    def lookup(self, entity_id: int, day: dt.date | None, fallback: str | None, *,
               request_id: str | None = None, explain: ExplainRequest | None = None) -> bytes | dict[str, Any]:
        """The entity's precomputed document (bytes, rendered by the database) on `day` (default: the latest
        complete date); with fallback='live' a miss is scored from the entity's latest features (a dict).
        With `explain`: the day's stored reasons (null when its run stored none for the entity); a live miss
        gets live reasons. A database that cannot be reached raises StoreUnavailable."""
        key = self.predictor.entity_key
        if day is None:
            day = self.source.latest_date()
        found = self.source.document(entity_id, day) if day is not None else None
        if found is not None:
            self._rows.inc()
            if explain is None:
                return found
            stored = self.source.reasons(entity_id, day)
            return {**json.loads(found), "explanation": {"source": "precomputed",
                                                         "contributions": stored[:explain.top_k]} if stored else None}
        if fallback == "live":  # compute only on a miss, from the entity's latest features
            return self._live(entity_id, request_id, explain)
        if day is None:
            raise NotFound("no_predictions", f"model '{self.spec.name}' has no successful batch run yet")
        raise NotFound("entity_not_found", f"no precomputed prediction for {key}={entity_id} on {day.isoformat()}",
                       column=key)

    def _live(self, entity_id: int, request_id: str | None, explain: ExplainRequest | None) -> dict[str, Any]:
        key = self.predictor.entity_key
        row = self.source.latest_features(entity_id)
        if row is None:
            raise NotFound("entity_not_found", f"no precomputed prediction and no features for {key}={entity_id}",
                           column=key)
        features_date, record = row
        scored = self.predictor.predict([record], route="lookup", ids=[entity_id], request_id=request_id,
                                        explain=explain)
        item = scored.items(key)[0]
        return {"model": self.spec.name, "entity_key": key, "entity_id": entity_id, **item,
                "model_version": scored.version,
                "features_date": features_date.isoformat(), "source": "live"}

    def cache_first(self, features: Sequence[Mapping[str, Any]], ids: list[Any], *, request_id: str | None = None
                    ) -> tuple[str | None, list[dict[str, Any]]] | None:
        """Records carrying the entity key get the latest batch prediction when there is one and only the misses
        are scored: (model version of the scored ones, one item per record); None when nothing is cached (or the
        database is down: the cache is an optimisation, so that means "score live", not an error)."""
        cached = self._hits(ids)
        if not cached:
            return None
        results: list[dict[str, Any] | None] = [None] * len(ids)
        miss_rows = [i for i, e in enumerate(ids) if not (isinstance(e, int) and e in cached)]
        for i, e in enumerate(ids):
            if isinstance(e, int) and e in cached:
                p = cached[e]
                item = {"score": p.score, "label": p.label} if self.spec.is_classifier else {"prediction": p.score}
                results[i] = {**item, "source": "precomputed", "model_version": str(p.model_version),
                              "prediction_date": p.prediction_date.isoformat()}
        version = None
        if miss_rows:
            scored = self.predictor.predict([features[i] for i in miss_rows], route="v1",
                                            ids=[ids[i] for i in miss_rows], request_id=request_id)
            version = scored.version
            for i, item in zip(miss_rows, scored.predictions.records(), strict=True):
                results[i] = {**item, "source": "live", "model_version": version}
        self._rows.inc(len(ids) - len(miss_rows))
        return version, results  # type: ignore[return-value]  # every slot is filled

    def _hits(self, entity_ids: list[Any]) -> dict[int, Precomputed]:
        ids = sorted({e for e in entity_ids if isinstance(e, int) and not isinstance(e, bool)})
        if not ids:
            return {}
        try:
            day = self.source.latest_date()
            return self.source.get_many(ids, day) if day is not None else {}
        except StoreUnavailable:
            return {}
