"""The one prediction path every protocol goes through.

Protocols (serving/protocols/) only translate their wire format in and out; this owns what they share: the
loaded model, the row limits, the entity-key split, scoring, the row metrics, precomputed lookups (cache first)
and the job queue, with the store's and queue's failures mapped to their HTTP answers once. (The model named in
the URL is checked from the route declarations, serving/routes.py; the body limit is the app's
MAX_CONTENT_LENGTH, set from the same settings.)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flask import current_app, request

from scoring import job_queue
from scoring.encoding import InputError, encode
from scoring.scorer import Contributions, ExplainRequest, Predictions, Scorer
from scoring.spec import ModelSpec
from serving.auth import current_client
from serving.config import Settings
from serving.errors import ApiError, input_error_status
from serving.metrics import ROWS
from serving.middleware import REQUEST_ID_KEY
from serving.model_holder import ModelHolder
from serving.payload_log import PayloadLog, Sampled
from serving.store import Precomputed, Store, StoreUnavailable

EXTENSION_KEY = "serving"
FALLBACKS = ("live", "precomputed")


class DataPlane:
    def __init__(self, spec: ModelSpec, settings: Settings, holder: ModelHolder, store: Store,
                 payloads: PayloadLog | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.holder = holder
        self.store = store
        self.payloads = payloads  # the sampled payload log of live scoring (None: off)
        self.entity_key = spec.source.entity_key
        self.max_rows = settings.max_rows
        self.job_max_records = settings.job_max_records
        self._rows_live = ROWS.labels(spec.name, "live")  # hot-path counters, labels resolved once
        self._rows_precomputed = ROWS.labels(spec.name, "precomputed")

    # ------------------------------------------------------------ model and limits

    def scorer(self) -> Scorer:
        """The loaded version, taken once per request: a swap mid-request cannot mix versions."""
        scorer = self.holder.current
        if scorer is None:
            detail = self.holder.stats.last_error or "not loaded yet"
            raise ApiError(503, "model_not_loaded", f"model '{self.spec.name}' has no loaded version: {detail}",
                           headers={"Retry-After": "5"})
        return scorer

    def check_rows(self, n: int) -> None:
        if n > self.max_rows:
            raise ApiError(413, "too_many_rows",
                           f"{n} rows in one request; the limit is {self.max_rows} (SERVING_MAX_ROWS)")

    def db_ok(self) -> bool:
        return self.store.ping()

    # ------------------------------------------------------------ scoring

    def _score(self, scorer: Scorer, matrix: np.ndarray, route: str, ids: list[Any] | None = None) -> Predictions:
        """Every live prediction goes through here: score, and hand a sample to the payload log (no I/O here)."""
        preds = scorer.predict_matrix(matrix)
        payloads = self.payloads
        if payloads is not None and payloads.sampled():
            payloads.offer(Sampled(time.time(), scorer.version, route, request.environ.get(REQUEST_ID_KEY), matrix,
                                   preds, ids))
        return preds

    def predict_encoded(self, n_rows: int, matrix: Callable[[Scorer], np.ndarray], *, route: str,
                        version: str | None = None) -> tuple[Scorer, Predictions]:
        """Score a protocol's input, encoded by `matrix(scorer)` once the row limit and the model are known."""
        self.check_rows(n_rows)
        scorer = self.scorer()
        if version is not None and version != scorer.version:
            raise ApiError(404, "unknown_version", f"model '{self.spec.name}' version {version} is not loaded "
                                                   f"(loaded: {scorer.version})")
        preds = self._score(scorer, matrix(scorer), route)
        self._rows_live.inc(len(preds))
        return scorer, preds

    def predict_records(self, records: list[dict[str, Any]], fallback: str = "live",
                        explain: ExplainRequest | None = None) -> tuple[str | None, list[dict[str, Any]]]:
        """(model version, one item per record). live: every record is scored. precomputed (cache first): records
        carrying the entity key get the latest batch prediction when there is one, only misses are scored.
        With `explain` every record is scored live, with its reasons from the same matrix."""
        self.check_rows(len(records))
        key = self.entity_key
        # The entity key identifies a row; it is not a feature, so it is set aside before scoring.
        features, ids = job_queue.split_entity_key(records, key)
        if fallback == "precomputed" and ids is not None and explain is None:
            cached = self._cache_hits(ids)
            if cached:
                return self._cache_first(features, ids, cached)
        scorer = self.scorer()
        matrix = scorer.encode(features).matrix
        reasons = self.explain(scorer, matrix, explain) if explain is not None else None  # a refusal comes first
        items = self._score(scorer, matrix, "v1", ids).records()
        if reasons is not None:
            for item, reason in zip(items, reasons.records(explain.top_k), strict=True):
                item["explanation"] = reason
        if fallback == "precomputed" or (ids is not None and any(e is not None for e in ids)):
            for item, e in zip(items, ids or [None] * len(items), strict=True):
                item["source"] = "live"
                if e is not None:
                    item[key] = e
        self._rows_live.inc(len(items))
        return scorer.version, items

    def explain(self, scorer: Scorer, matrix: np.ndarray, explain: ExplainRequest) -> Contributions:
        """The reasons of live rows; exact ones only when the gate found them within the latency budget."""
        if explain.method == "exact" and scorer.explain_online is False:
            raise ApiError(422, "explain_not_allowed",
                           f"model '{self.spec.name}' version {scorer.version} may not explain online with exact "
                           f"reasons: they took p99 {scorer.explain_p99_ms:.1f} ms at the gate, over the latency "
                           f"budget of {self.spec.serving.latency_budget_ms:g} ms; ask for \"method\": \"approx\" "
                           f"or read the nightly reasons (GET .../predictions/<id>?explain=true)")
        return scorer.contributions(matrix, explain.method)

    def _cache_first(self, features: Sequence[dict[str, Any]], ids: list[Any], cached: dict[int, Precomputed]
                     ) -> tuple[str | None, list[dict[str, Any]]]:
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
            scorer = self.scorer()
            version = scorer.version
            live = self._score(scorer, scorer.encode([features[i] for i in miss_rows]).matrix, "v1",
                               [ids[i] for i in miss_rows]).records()
            for i, item in zip(miss_rows, live, strict=True):
                results[i] = {**item, "source": "live", "model_version": version}
        self._rows_precomputed.inc(len(ids) - len(miss_rows))
        self._rows_live.inc(len(miss_rows))
        return version, results  # type: ignore[return-value]  # every slot is filled

    def _cache_hits(self, entity_ids: list[Any]) -> dict[int, Precomputed]:
        ids = sorted({e for e in entity_ids if isinstance(e, int) and not isinstance(e, bool)})
        if not ids:
            return {}
        try:
            day = self.store.latest_date()
            return self.store.get_many(ids, day) if day is not None else {}
        except StoreUnavailable:
            return {}  # the cache is an optimisation: a down database means "score live", not an error

    # ------------------------------------------------------------ precomputed lookups

    def lookup(self, entity_id: int, day: dt.date | None, fallback: str | None,
               explain: ExplainRequest | None = None) -> bytes | dict[str, Any]:
        """The entity's precomputed document (bytes, rendered by the database) on `day` (default: the latest
        complete date); with fallback='live' a miss is scored from the entity's latest features (a dict).
        With `explain`: the day's stored reasons (null when its run stored none for the entity); a live miss
        gets live reasons."""
        key = self.entity_key
        try:
            if day is None:
                day = self.store.latest_date()
            found = self.store.document(entity_id, day) if day is not None else None
        except StoreUnavailable as exc:
            raise _db_unavailable(exc) from exc
        if found is not None:
            self._rows_precomputed.inc()
            return found if explain is None else self._with_stored_reasons(found, entity_id, day, explain)
        if fallback == "live":  # compute only on a miss, from the entity's latest features
            return self._live_lookup(entity_id, explain)
        if day is None:
            raise ApiError(404, "no_predictions", f"model '{self.spec.name}' has no successful batch run yet")
        raise ApiError(404, "entity_not_found",
                       f"no precomputed prediction for {key}={entity_id} on {day.isoformat()}", column=key)

    def _with_stored_reasons(self, found: bytes, entity_id: int, day: dt.date, explain: ExplainRequest
                             ) -> dict[str, Any]:
        try:
            stored = self.store.reasons(entity_id, day)
        except StoreUnavailable as exc:
            raise _db_unavailable(exc) from exc
        return {**json.loads(found), "explanation": None if not stored else {
            "source": "precomputed", "contributions": stored[:explain.top_k]}}

    def _live_lookup(self, entity_id: int, explain: ExplainRequest | None = None) -> dict[str, Any]:
        key = self.entity_key
        try:
            row = self.store.latest_features(entity_id)
        except StoreUnavailable as exc:
            raise _db_unavailable(exc) from exc
        if row is None:
            raise ApiError(404, "entity_not_found",
                           f"no precomputed prediction and no features for {key}={entity_id}", column=key)
        features_date, record = row
        scorer = self.scorer()
        matrix = scorer.encode([record]).matrix
        reasons = self.explain(scorer, matrix, explain) if explain is not None else None
        item = self._score(scorer, matrix, "lookup", [entity_id]).records()[0]
        if reasons is not None:
            item["explanation"] = reasons.records(explain.top_k)[0]
        self._rows_live.inc()
        return {"model": self.spec.name, "entity_key": key, "entity_id": entity_id, **item,
                "model_version": scorer.version, "features_date": features_date.isoformat(), "source": "live"}

    # ------------------------------------------------------------ the job queue

    def _new_job(self, records: list[dict[str, Any]], idempotency_key: str | None) -> job_queue.NewJob:
        ttl = self.settings.job_ttl_s
        return job_queue.NewJob(records, idempotency_key, owner=current_client(), ttl_s=ttl if ttl > 0 else None)

    def submit_job(self, records: list[dict[str, Any]], idempotency_key: str | None) -> tuple[job_queue.Job, bool]:
        """Validate with live predict's encoder (the same 4xx; nothing is queued), then queue: (job, created).
        Validation needs only the spec, so submits are accepted even while no model version is loaded. The job
        is the caller's (current_client): its idempotency keys are its own."""
        if len(records) > self.job_max_records:
            raise ApiError(413, "too_many_records", f"{len(records)} records in one job; the limit is "
                                                    f"{self.job_max_records} (SERVING_JOB_MAX_RECORDS)")
        features, _ = job_queue.split_entity_key(records, self.entity_key)
        encode(self.spec, features)
        try:
            return self.store.submit_job(self.spec.name, self._new_job(records, idempotency_key))
        except job_queue.IdempotencyConflict as exc:
            raise ApiError(422, "idempotency_key_reused", str(exc)) from exc
        except ValueError as exc:  # a value the encoder accepts but JSON storage cannot hold (e.g. Infinity)
            raise ApiError(422, "invalid_input", str(exc)) from exc
        except StoreUnavailable as exc:
            raise _queue_unavailable(exc) from exc

    def submit_bulk(self, jobs: list[tuple[list[dict[str, Any]], str | None]]) -> list[tuple[job_queue.Job, bool]]:
        """Many jobs in one request and one transaction, each with its own id and idempotency key: accepted
        whole or refused whole, the error naming the job and row (`job 3, row 0: ...`)."""
        if len(jobs) > self.settings.job_bulk_max_jobs:
            raise ApiError(413, "too_many_jobs", f"{len(jobs)} jobs in one bulk submit; the limit is "
                                                 f"{self.settings.job_bulk_max_jobs} (SERVING_JOB_BULK_MAX_JOBS)")
        total = sum(len(records) for records, _ in jobs)
        if total > self.job_max_records:
            raise ApiError(413, "too_many_records", f"{total} records in one bulk submit; the limit is "
                                                    f"{self.job_max_records} (SERVING_JOB_MAX_RECORDS)")
        self._validate_bulk([records for records, _ in jobs])
        try:
            return self.store.submit_bulk(self.spec.name, [self._new_job(r, k) for r, k in jobs])
        except job_queue.IdempotencyConflict as exc:
            raise ApiError(422, "idempotency_key_reused", str(exc), row=exc.index) from exc
        except ValueError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from exc
        except StoreUnavailable as exc:
            raise _queue_unavailable(exc) from exc

    def _validate_bulk(self, jobs: list[list[dict[str, Any]]]) -> None:
        """All records in one encoder call (the cheap path); a failure is located and named per job."""
        flat = [job_queue.split_entity_key(records, self.entity_key)[0] for records in jobs]
        try:
            encode(self.spec, [rec for features in flat for rec in features])
            return
        except InputError as exc:
            if exc.row is not None:  # the flat row -> (job, row within the job)
                start = 0
                for index, features in enumerate(flat):
                    if exc.row < start + len(features):
                        raise _in_job(exc, index, exc.row - start) from exc
                    start += len(features)
        for index, features in enumerate(flat):  # no row named (e.g. a missing column): find the job
            try:
                encode(self.spec, features)
            except InputError as exc:
                raise _in_job(exc, index, exc.row) from exc

    def get_job(self, raw_id: str) -> job_queue.Job:
        return self._job_op(self.store.get_job, raw_id)

    def cancel_job(self, raw_id: str) -> job_queue.Job:
        return self._job_op(self.store.cancel_job, raw_id)

    @staticmethod
    def _job_op(op: Callable[[Any, str], job_queue.Job], raw_id: str) -> job_queue.Job:
        """A job operation for the caller: another client's job is 404, exactly like a job that does not exist."""
        try:
            job_id = job_queue.parse_job_id(raw_id)
        except ValueError as exc:
            raise ApiError(400, "malformed_job_id", str(exc)) from exc
        try:
            return op(job_id, current_client())
        except job_queue.JobNotFound as exc:
            raise ApiError(404, "job_not_found", str(exc)) from exc
        except job_queue.JobStateError as exc:
            raise ApiError(409, "job_not_cancellable", str(exc)) from exc
        except StoreUnavailable as exc:
            raise _queue_unavailable(exc) from exc


def _in_job(exc: InputError, index: int, row: int | None) -> ApiError:
    message = re.sub(r"^row \d+: ", "", str(exc))
    where = f"job {index}, row {row}" if row is not None else f"job {index}"
    return ApiError(input_error_status(exc), exc.kind, f"{where}: {message}", column=exc.column, row=row)


def _db_unavailable(exc: StoreUnavailable) -> ApiError:
    return ApiError(503, "database_unavailable", str(exc), headers={"Retry-After": "5"})


def _queue_unavailable(exc: StoreUnavailable) -> ApiError:
    return ApiError(503, "unavailable", f"the job queue database is unavailable: {exc}", headers={"Retry-After": "1"})


def plane() -> DataPlane:
    """The data plane of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]
