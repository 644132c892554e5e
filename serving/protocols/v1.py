"""The platform's own API: precomputed lookup, live predict (with a cache-first policy), model info."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from serving.errors import ApiError
from serving.lookup import Precomputed, StoreUnavailable
from serving.metrics import ROWS
from serving.middleware import require_token
from serving.requests_json import check_rows, json_body
from serving.state import ServingState, state

bp = Blueprint("v1", __name__)


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    """A JSON response without Flask's provider machinery (measurably cheaper on the hot routes)."""
    return Response(json.dumps(body), status=status, mimetype="application/json")

FALLBACKS = ("live", "precomputed")
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


def check_model(st: ServingState, model: str) -> None:
    if model != st.spec.name:
        raise ApiError(404, "unknown_model", f"this deployment serves model '{st.spec.name}', not '{model}'")


def loaded_scorer(st: ServingState):
    scorer = st.holder.current
    if scorer is None:
        detail = st.holder.stats.last_error or "not loaded yet"
        raise ApiError(503, "model_not_loaded", f"model '{st.spec.name}' has no loaded version: {detail}",
                       headers={"Retry-After": "5"})
    return scorer


def _store(st: ServingState):
    if st.store is None:
        raise ApiError(503, "database_unavailable", "no serving database configured (DATABASE_URL)")
    return st.store


def _serving_date(store, day_param: str | None) -> dt.date:
    if day_param is not None:
        try:
            return dt.date.fromisoformat(day_param)
        except ValueError as exc:
            raise ApiError(400, "invalid_date", f"date must be YYYY-MM-DD, got {day_param!r}") from exc
    try:
        day = store.latest_date()
    except StoreUnavailable as exc:
        raise ApiError(503, "database_unavailable", str(exc), headers={"Retry-After": "5"}) from exc
    if day is None:
        raise ApiError(404, "no_predictions", f"model '{store.spec.name}' has no successful batch run yet")
    return day


@bp.get("/v1/models/<model>/predictions/<entity_id>")
def lookup(model: str, entity_id: str) -> Response:
    st = state()
    require_token(st.settings.api_token)
    check_model(st, model)
    key = st.spec.source.entity_key
    try:
        eid = int(entity_id)
    except ValueError as exc:
        raise ApiError(400, "invalid_entity_id", f"{key} must be an integer, got {entity_id!r}") from exc
    if not _BIGINT_MIN <= eid <= _BIGINT_MAX:  # the key column is bigint
        raise ApiError(400, "invalid_entity_id", f"{key} must be a 64-bit integer, got {entity_id!r}")
    fallback = request.args.get("fallback")
    if fallback not in (None, "live"):
        raise ApiError(400, "invalid_fallback", f"fallback must be 'live' (or absent), got {fallback!r}")
    store = _store(st)
    try:
        day = _serving_date(store, request.args.get("date"))
        found = store.document(eid, day)
    except StoreUnavailable as exc:
        raise ApiError(503, "database_unavailable", str(exc), headers={"Retry-After": "5"}) from exc
    except ApiError as exc:
        if not (fallback == "live" and exc.code == "no_predictions"):
            raise
        day, found = None, None
    if found is None:
        if fallback == "live":  # compute only on a miss, from the entity's latest features
            return _live_lookup(st, eid)
        raise ApiError(404, "entity_not_found", f"no precomputed prediction for {key}={eid} on {day.isoformat()}",
                       column=key)
    st.rows_precomputed.inc()
    return Response(found, mimetype="application/json")


def _live_lookup(st: ServingState, eid: int) -> Response:
    key = st.spec.source.entity_key
    try:
        row = _store(st).latest_features(eid)
    except StoreUnavailable as exc:
        raise ApiError(503, "database_unavailable", str(exc), headers={"Retry-After": "5"}) from exc
    if row is None:
        raise ApiError(404, "entity_not_found", f"no precomputed prediction and no features for {key}={eid}",
                       column=key)
    features_date, record = row
    scorer = loaded_scorer(st)
    item = _live_items(scorer, [record])[0]
    ROWS.labels(st.spec.name, "live").inc()
    return jsonify({"model": st.spec.name, "entity_key": key, "entity_id": eid, **item,
                    "model_version": scorer.version, "features_date": features_date.isoformat(), "source": "live"})


def _live_items(scorer, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return scorer.score(records).records()


@bp.post("/v1/models/<model>/predict")
def predict(model: str) -> Response:
    """`{"records": [...], "fallback"?: "live" | "precomputed"}`.

    live (default): every record is scored by the loaded model. precomputed (cache first, the Online bigsize
    remedy): records that carry the entity key get the latest batch prediction when there is one; only the
    misses are scored live. Each prediction says its source.
    """
    st = state()
    require_token(st.settings.api_token)
    check_model(st, model)
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", 'expected a JSON object {"records": [...]}')
    unknown = sorted(set(body) - {"records", "fallback"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field '{unknown[0]}' (allowed: records, fallback)")
    records = body.get("records")
    if not isinstance(records, list) or not records:
        raise ApiError(400, "invalid_records", "'records' must be a non-empty list of objects")
    check_rows(len(records), st.settings.max_rows)
    fallback = body.get("fallback", "live")
    if fallback not in FALLBACKS:
        raise ApiError(400, "invalid_fallback", f"'fallback' must be one of {list(FALLBACKS)}, got {fallback!r}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ApiError(400, "invalid_records", f"row {i}: each record must be an object", row=i)
    key = st.spec.source.entity_key
    # The entity key identifies a row; it is not a feature, so it is set aside before scoring.
    entity_ids = [rec.get(key) for rec in records]
    features = [{k: v for k, v in rec.items() if k != key} for rec in records] \
        if any(key in rec for rec in records) else records

    cached: dict[int, Precomputed] = {}
    if fallback == "precomputed":
        cached = _cache_hits(st, entity_ids)
    if fallback == "precomputed" and cached:
        results: list[dict[str, Any] | None] = [None] * len(records)
        miss_rows = [i for i, e in enumerate(entity_ids) if not (isinstance(e, int) and e in cached)]
        for i, e in enumerate(entity_ids):
            if isinstance(e, int) and e in cached:
                p = cached[e]
                item = {"score": p.score, "label": p.label} if st.spec.is_classifier else {"prediction": p.score}
                results[i] = {**item, "source": "precomputed", "model_version": str(p.model_version),
                              "prediction_date": p.prediction_date.isoformat()}
        scorer = None
        if miss_rows:
            scorer = loaded_scorer(st)
            live = _live_items(scorer, [features[i] for i in miss_rows])
            for i, item in zip(miss_rows, live, strict=True):
                results[i] = {**item, "source": "live", "model_version": scorer.version}
        ROWS.labels(st.spec.name, "precomputed").inc(len(records) - len(miss_rows))
        ROWS.labels(st.spec.name, "live").inc(len(miss_rows))
        version = scorer.version if scorer is not None else None
        return jsonify({"model": st.spec.name, "model_version": version, "predictions": results})

    scorer = loaded_scorer(st)  # taken once: a swap mid-request cannot mix versions
    items = _live_items(scorer, features)
    if fallback == "precomputed" or any(e is not None for e in entity_ids):
        for item, e in zip(items, entity_ids, strict=True):
            item["source"] = "live"
            if e is not None:
                item[key] = e
    st.rows_live.inc(len(items))
    return json_response({"model": st.spec.name, "model_version": scorer.version, "predictions": items})


def _cache_hits(st: ServingState, entity_ids: list[Any]) -> dict[int, Precomputed]:
    ids = sorted({e for e in entity_ids if isinstance(e, int) and not isinstance(e, bool)})
    if not ids or st.store is None:
        return {}
    try:
        day = st.store.latest_date()
        return st.store.get_many(ids, day) if day is not None else {}
    except StoreUnavailable:
        return {}  # the cache is an optimisation: a down database means "score live", not an error


@bp.get("/v1/models/<model>")
def model_info(model: str) -> Response:
    st = state()
    check_model(st, model)
    spec = st.spec
    scorer = st.holder.current
    stats = st.holder.stats
    features = [{"name": f.name, "type": f.type, "nullable": f.nullable,
                 **({"categories": list(f.categories)} if f.categories else {})} for f in spec.features]
    outputs = ([{"name": "score", "type": "float"}, {"name": "label", "type": "int"}] if spec.is_classifier
               else [{"name": "prediction", "type": "float"}])
    return jsonify({
        "model": spec.name, "description": spec.description, "task": spec.task,
        "ref": st.settings.model_ref,
        "loaded_version": scorer.version if scorer else None,
        "loaded_at": (dt.datetime.fromtimestamp(scorer.loaded_at, dt.UTC).isoformat() if scorer else None),
        "signature": {"inputs": features, "outputs": outputs},
        "entity_key": spec.source.entity_key, "prediction_table": spec.prediction_table,
        "serving": {"mode": spec.serving.mode, "latency_budget_ms": spec.serving.latency_budget_ms},
        "reload": {"poll_interval_s": st.holder.poll_interval_s, "reloads": stats.reloads,
                   "refused": stats.refused, "refused_versions": stats.refused_versions,
                   "last_error": stats.last_error,
                   "last_check_at": (dt.datetime.fromtimestamp(stats.last_check_at, dt.UTC).isoformat()
                                     if stats.last_check_at else None)},
        "limits": {"max_rows": st.settings.max_rows, "max_body_bytes": st.settings.max_body_bytes},
        "process_started": dt.datetime.fromtimestamp(_STARTED, dt.UTC).isoformat(),
    })


_STARTED = time.time()
