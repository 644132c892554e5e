"""The platform's own API: precomputed lookup (with a live fallback), live predict (cache first on request),
model info. Errors: `{"error": {"code", "message", "column", "row"}}`."""

from __future__ import annotations

import datetime as dt
import re
import time

from flask import Response, request

from scoring.scorer import EXPLAIN_METHODS, ExplainRequest
from serving.auth import sees_internals
from serving.dataplane import FALLBACKS, plane, request_id
from serving.errors import ERROR_SCHEMA, ApiError, error_response
from serving.openapi import ref
from serving.routes import PUBLIC, Param, Protocol, Scope, json_answer
from serving.values import is_bigint, shown
from serving.wire import json_response, records_body

api = Protocol("v1", "The platform's API: lookups, live predictions, model info", ERROR_SCHEMA, error_response)

PREDICT = Scope("predict")
_STARTED = time.time()
_INTEGER = re.compile(r"-?[0-9]{1,20}\Z")

_EXPLAIN = {
    "type": "object", "additionalProperties": False,
    "description": "Return each prediction's reasons: per-feature contributions in margin space (log-odds for a "
                   "classifier), largest |contribution| first; bias + every contribution = the margin. A category "
                   "is one feature (one contribution, its value the category). Explained records are scored live. "
                   "exact (TreeSHAP) is refused with 422 explain_not_allowed when the promotion gate measured it "
                   "over the model's latency budget; approx (Saabas) is always allowed.",
    "properties": {"top_k": {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "all"}], "default": "all"},
                   "method": {"enum": list(EXPLAIN_METHODS), "default": "exact"}}}
_EXPLANATION = {
    "type": ["object", "null"], "properties": {
        "bias": {"type": "number"}, "source": {"enum": ["precomputed"]},
        "contributions": {"type": "array", "items": {"type": "object", "properties": {
            "feature": {"type": "string"}, "value": {"type": ["number", "string", "null"]},
            "contribution": {"type": "number"}}}}}}
_STRING_OR_NULL = {"type": ["string", "null"]}
_LOOKUP = {
    "type": "object", "required": ["model", "entity_key", "entity_id", "model_version", "source"],
    "properties": {
        "model": {"type": "string"}, "entity_key": {"type": "string"}, "entity_id": {"type": "integer"},
        "score": {"type": "number"}, "label": {"type": ["integer", "null"]}, "prediction": {"type": "number"},
        "model_version": {"type": "string"}, "source": {"enum": ["precomputed", "live"]},
        "prediction_date": {"type": "string", "format": "date", "description": "precomputed: the batch's date"},
        "run_id": {"type": "string"}, "scored_at": {"type": "string"},
        "features_date": {"type": "string", "format": "date", "description": "live: the features' date"},
        "explanation": _EXPLANATION}}
_PREDICT_BODY = {
    "type": "object", "required": ["records"], "additionalProperties": False,
    "properties": {"records": {"type": "array", "minItems": 1, "items": ref("Record")},
                   "fallback": {"enum": list(FALLBACKS), "default": "live"}, "explain": _EXPLAIN}}
_PREDICTED = {
    "type": "object", "required": ["model", "model_version", "predictions"],
    "properties": {
        "model": {"type": "string"}, "model_version": _STRING_OR_NULL,
        "predictions": {"type": "array", "items": {"allOf": [ref("Prediction"), {"type": "object", "properties": {
            "source": {"enum": ["live", "precomputed"]}, "model_version": {"type": "string"},
            "prediction_date": {"type": "string", "format": "date"}, "explanation": _EXPLANATION}}]}}}}
_MODEL_INFO = {
    "type": "object",
    "required": ["model", "task", "loaded_version", "loaded_at", "signature", "entity_key", "reload", "limits"],
    "properties": {"model": {"type": "string"}, "description": {"type": "string"}, "task": {"type": "string"},
                   "ref": {"type": "string"}, "loaded_version": _STRING_OR_NULL, "loaded_at": _STRING_OR_NULL,
                   "signature": {"type": "object"}, "entity_key": {"type": "string"},
                   "prediction_table": {"type": "string"}, "serving": {"type": "object"},
                   "reload": {"type": "object"}, "limits": {"type": "object"}, "process_started": {"type": "string"}}}


@api.route("GET", "/v1/models/<model>/predictions/<entity_id>", auth=PREDICT,
           summary="Latest precomputed (batch) prediction of an entity, or ?date=YYYY-MM-DD; ?fallback=live "
                   "scores the entity's latest features on a miss",
           params=(Param("date", {"type": "string", "format": "date"}, "a batch date (default: the latest "
                                                                         "complete one)"),
                   Param("fallback", {"enum": ["live"]}, "live: score a miss from the entity's latest features"),
                   Param("explain", {"oneOf": [{"enum": ["true", "all"]}, {"type": "integer", "minimum": 1}]},
                         "add the reasons: the day's stored ones (models.yaml batch.explain; null when its run "
                         "stored none for the entity), live ones for a live fallback; a number keeps the top N")),
           responses={200: json_answer("The prediction", _LOOKUP)}, errors=(400, 404, 503))
def lookup(model: str, entity_id: str) -> Response:
    dp = plane()
    key = dp.entity_key
    if not _INTEGER.match(entity_id):  # int() alone would take ' 1', '1_000' and other scripts' digits
        raise ApiError(400, "invalid_entity_id", f"{key} must be an integer, got {entity_id!r}", column=key)
    eid = int(entity_id)
    if not is_bigint(eid):  # the key column is bigint
        raise ApiError(400, "invalid_entity_id", f"{key} must be a 64-bit integer, got {entity_id!r}", column=key)
    args = request.args
    fallback = args.get("fallback")
    if fallback not in (None, "live"):
        raise ApiError(400, "invalid_fallback", f"fallback must be 'live' (or absent), got {fallback!r}")
    day_param = args.get("date")
    day = None
    if day_param is not None:
        try:
            day = dt.date.fromisoformat(day_param)
        except ValueError as exc:
            raise ApiError(400, "invalid_date", f"date must be YYYY-MM-DD, got {day_param!r}") from exc
    explain = args.get("explain")
    found = dp.lookups.lookup(eid, day, fallback, request_id=request_id(), explain=None if explain is None else (
        explain_request({"top_k": "all" if explain in ("true", "all") else int(explain) if _INTEGER.match(explain)
                         else explain})))
    if isinstance(found, bytes):  # the document as the database rendered it
        return Response(found, mimetype="application/json")
    return json_response(found)


@api.route("POST", "/v1/models/<model>/predict", auth=PREDICT,
           summary='Live prediction: {"records": [...], "fallback"?: "live" | "precomputed"}; precomputed serves '
                   "records carrying the entity key from the nightly cache and scores only the misses",
           request={"application/json": _PREDICT_BODY}, responses={200: json_answer("One item per record",
                                                                                     _PREDICTED)},
           errors=(400, 404, 413, 415, 422, 503))
def predict(model: str) -> Response:
    body, records = records_body(("records", "fallback", "explain"))
    fallback = body.get("fallback", "live")
    if not isinstance(fallback, str) or fallback not in FALLBACKS:
        raise ApiError(400, "invalid_fallback", f"'fallback' must be one of {list(FALLBACKS)}, got {shown(fallback)}",
                       column="fallback")
    explain = None if body.get("explain") is None else explain_request(body["explain"])
    dp = plane()
    features, ids = dp.predictor.split(records)
    rid = request_id()
    if fallback == "precomputed" and ids is not None and explain is None:  # explained records are scored live
        answered = dp.lookups.cache_first(features, ids, request_id=rid)
        if answered is not None:
            return _predicted(answered[0], answered[1])
    scored = dp.predictor.predict(features, route="v1", ids=ids, request_id=rid, explain=explain)
    items = scored.items(dp.entity_key)
    if fallback == "precomputed" or (ids is not None and any(e is not None for e in ids)):
        for item, e in zip(items, ids or [None] * len(items), strict=True):
            item["source"] = "live"
            if e is not None:
                item[dp.entity_key] = e
    return _predicted(scored.version, items)


def _predicted(version: str | None, items: list[dict]) -> Response:
    return json_response({"model": plane().spec.name, "model_version": version, "predictions": items})


@api.route("GET", "/v1/models/<model>", auth=PUBLIC,
           summary="Model spec, loaded version, loaded at, signature, limits; reload errors, alias and table "
                   "only for a caller with a valid token (when the deployment has tokens)",
           responses={200: json_answer("The model", _MODEL_INFO)}, errors=(404,))
def model_info(model: str) -> Response:
    dp = plane()
    spec = dp.spec
    scorer = dp.holder.current
    stats = dp.holder.stats
    features = [{"name": f.name, "type": f.type, "nullable": f.nullable,
                 **({"categories": list(f.categories)} if f.categories else {})} for f in spec.features]
    outputs = ([{"name": "score", "type": "float"}, {"name": "label", "type": "int"}] if spec.is_classifier
               else [{"name": "prediction", "type": "float"}])
    body = {
        "model": spec.name, "description": spec.description, "task": spec.task,
        "ref": dp.settings.model_ref,
        "loaded_version": scorer.version if scorer else None,
        "loaded_at": _iso(scorer.loaded_at if scorer else None),
        "signature": {"inputs": features, "outputs": outputs},
        "entity_key": spec.source.entity_key, "prediction_table": spec.prediction_table,
        "serving": {"mode": spec.serving.mode, "latency_budget_ms": spec.serving.latency_budget_ms},
        "reload": {"poll_interval_s": dp.holder.poll_interval_s, "reloads": stats.reloads,
                   "refused": stats.refused, "refused_versions": stats.refused_versions,
                   "last_error": stats.last_error, "last_check_at": _iso(stats.last_check_at)},
        "limits": {"max_rows": dp.predictor.max_rows, "max_body_bytes": dp.settings.max_body_bytes},
        "process_started": _iso(_STARTED),
    }
    if not sees_internals():  # anonymous callers of a deployment with tokens: no error text, tables or alias
        for key in _INTERNAL:
            body.pop(key)
        body["reload"] = {"poll_interval_s": dp.holder.poll_interval_s}
    return json_response(body)


_INTERNAL = ("ref", "prediction_table", "process_started")


def explain_request(value: object) -> ExplainRequest:
    """The body's "explain" ({"top_k": N | "all", "method": "exact" | "approx"}) as a request."""
    if not isinstance(value, dict) or set(value) - {"top_k", "method"}:
        raise ApiError(400, "invalid_explain", f"'explain' must be an object with 'top_k' (a number >= 1 "
                                               f"or \"all\") and 'method' ({' or '.join(EXPLAIN_METHODS)}), got "
                                               f"{shown(value)}", column="explain")
    top_k = value.get("top_k", "all")
    if top_k != "all" and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ApiError(400, "invalid_explain", f"'explain.top_k' must be a number >= 1 or \"all\", got "
                                               f"{shown(top_k)}", column="explain")
    method = value.get("method", "exact")
    if method not in EXPLAIN_METHODS:
        raise ApiError(400, "invalid_explain", f"'explain.method' must be one of {list(EXPLAIN_METHODS)}, got "
                                               f"{shown(method)}", column="explain")
    return ExplainRequest(None if top_k == "all" else top_k, method)


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None
