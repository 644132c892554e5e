"""MLflow's scoring protocol, as `mlflow models serve` speaks it: /invocations, /ping, /health, /version.

Parsing and schema enforcement are MLflow's own functions (so every accepted payload form, and every error
status, is what `mlflow models serve` gives); the matrix is then scored by the shared scorer. The one exception
is the payload MLflow's own client sends: a JSON `dataframe_split` (or `dataframe_records`) naming exactly the
signature's columns, every value a finite number. For it MLflow's parsing can only produce a float64 frame of
those numbers, so the matrix is built directly (~1 ms less per request; tests/test_mlflow_fast_path.py checks
it equals MLflow's path); any other payload goes through MLflow's functions. The registered
model takes the *encoded* numeric frame (category features as integer codes) and, as an XGBoost classifier's
pyfunc, answers class labels; a regressor answers values. Errors use MLflow's shape
`{"error_code": ..., "message": ...}`.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from flask import Response, request
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import _validate_prediction_input
from mlflow.pyfunc.scoring_server import (
    CONTENT_TYPE_CSV,
    CONTENT_TYPE_JSON,
    CONTENT_TYPES,
    SCORING_PROTOCOL_CHANGE_INFO,
    _decode_json_input,
    _split_data_and_params,
    infer_and_parse_data,
    parse_csv_input,
)
from mlflow.types import ColSpec, Schema
from mlflow.version import VERSION

from scoring.encoding import check_json_ints
from scoring.spec import ModelSpec
from serving.dataplane import plane, request_id
from serving.errors import ApiError
from serving.routes import PUBLIC, Protocol, Scope, json_answer
from serving.values import is_bigint

_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
          413: "BAD_REQUEST", 415: "BAD_REQUEST", 422: "INVALID_PARAMETER_VALUE", 503: "TEMPORARILY_UNAVAILABLE"}


_SCHEMAS: dict[tuple[str, ...], Schema] = {}


def input_schema(spec: ModelSpec) -> Schema:
    """The logged signature's inputs: every feature as a double column (the encoded frame training logs)."""
    names = tuple(spec.feature_names)
    schema = _SCHEMAS.get(names)
    if schema is None:
        schema = _SCHEMAS[names] = Schema([ColSpec("double", name) for name in names])
    return schema


def _proto_error(status: int, message: str) -> ApiError:
    return ApiError(status, _CODES.get(status, "BAD_REQUEST"), message)


def _mlflow_error(status: int, message: str, code: str | None = None) -> Response:
    body = json.dumps({"error_code": code or _CODES.get(status, "BAD_REQUEST"), "message": message})
    return Response(body, status=status, mimetype="application/json")


def _render(exc: ApiError) -> Response:
    resp = _mlflow_error(exc.status, exc.message)
    resp.headers.update(exc.headers)
    return resp


def _on_mlflow(exc: MlflowException) -> Response:
    # Raised here only while parsing and checking the client's payload: an input problem, never a server error.
    status = exc.get_http_status_code()
    return Response(exc.serialize_as_json(), status=status if status < 500 else 400, mimetype="application/json")


ERROR_SCHEMA = {"type": "object", "required": ["error_code", "message"],
                "properties": {"error_code": {"type": "string"}, "message": {"type": "string"},
                               "stack_trace": {"type": "string"}}}
api = Protocol("mlflow", "MLflow's scoring protocol, as `mlflow models serve` speaks it", ERROR_SCHEMA, _render,
               input_error=lambda exc: _proto_error(400, str(exc)), handlers={MlflowException: _on_mlflow})

_TABLE = {"type": "object", "description": "one of MLflow's input forms (columns are the logged signature's: "
                                           "every feature as a number, categories as integer codes)",
          "minProperties": 1, "properties": {
              "dataframe_split": {"type": "object", "properties": {"columns": {"type": "array"},
                                                                   "data": {"type": "array"}}},
              "dataframe_records": {"type": "array", "items": {"type": "object"}},
              "instances": {}, "inputs": {}, "params": {"type": "object"}}}
_PREDICTIONS = {"type": "object", "required": ["predictions"],
                "properties": {"predictions": {"type": "array", "items": {"type": "number"}}}}


@api.route("GET", "/ping", auth=PUBLIC, summary="MLflow scoring server health (404 until the model is loaded)",
           responses={200: json_answer("Loaded"), 404: json_answer("No model loaded yet")})
def ping() -> Response:
    # mlflow models serve answers 200 once its model is loaded
    ok = plane().holder.current is not None
    return Response("\n", status=200 if ok else 404, mimetype="application/json")


api.route("GET", "/health", auth=PUBLIC, summary="MLflow scoring server health (as /ping)", endpoint="health",
          responses={200: json_answer("Loaded"), 404: json_answer("No model loaded yet")})(ping)


@api.route("GET", "/version", auth=PUBLIC, summary="MLflow version",
           responses={200: json_answer("The MLflow version, as plain text")})
def version() -> Response:
    return Response(VERSION, status=200, mimetype="application/json")


def _content_type() -> tuple[str, dict[str, str]]:
    raw = request.headers.get("Content-Type")
    if not raw:
        raise _proto_error(415, f"This predictor only supports the following content types: Types: {CONTENT_TYPES}. "
                            f"Got '{raw}'.")
    parts = [p.strip() for p in raw.split(";")]
    params = {k.strip().lower(): v.strip() for p in parts[1:] for k, _, v in [p.partition("=")]}
    return parts[0].lower(), params


def _parse(mime: str, data: bytes) -> Any:
    if mime == CONTENT_TYPE_CSV:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _proto_error(400, f"Invalid input. Ensure that input is a valid UTF-8 encoded string. "
                                f"Error: '{exc!r}'") from exc
        return parse_csv_input(io.StringIO(text), schema=input_schema(plane().spec))
    try:
        decoded = _decode_json_input(data)  # MlflowInvalidInputException -> 400 BAD_REQUEST
    except RecursionError as exc:
        raise _proto_error(400, "Invalid input. The JSON document is nested too deeply.") from exc
    check_json_ints(plane().spec, decoded)  # MLflow's parser makes every number a double: check ints as sent
    payload, _params = _split_data_and_params(decoded)  # params are accepted and, like xgboost's pyfunc, unused
    return infer_and_parse_data(payload, input_schema(plane().spec))


@api.route("POST", "/invocations", auth=Scope("predict"),
           summary="MLflow scoring protocol (dataframe_split, dataframe_records, instances, inputs; JSON or CSV); "
                   "answers class labels for a classifier, values for a regressor",
           request={"application/json": _TABLE, "text/csv": {"type": "string"}},
           responses={200: json_answer("Predictions", _PREDICTIONS)}, errors=(400, 413, 415, 503))
def invocations() -> Response:
    dp = plane()
    mime, params = _content_type()
    if params.get("charset", "utf-8").lower() != "utf-8":
        raise _proto_error(415, "The scoring server only supports UTF-8")
    extra = set(params) - {"charset"}
    if extra:
        raise _proto_error(415, f"Unrecognized content type parameters: {', '.join(sorted(extra))}. "
                            f"{SCORING_PROTOCOL_CHANGE_INFO}")
    if mime not in (CONTENT_TYPE_JSON, CONTENT_TYPE_CSV):
        raise _proto_error(415, f"This predictor only supports the following content types: Types: "
                            f"{[CONTENT_TYPE_CSV, CONTENT_TYPE_JSON]}. Got '{request.headers.get('Content-Type')}'.")
    raw = request.get_data(cache=False)
    inputs = plain_numeric_matrix(raw, dp.spec.feature_names) if mime == CONTENT_TYPE_JSON else None
    if inputs is None:
        data = _parse(mime, raw)
        schema = input_schema(dp.spec)
        try:
            inputs, _ = _validate_prediction_input(data, None, schema, None, "mlflow.xgboost")
        except MlflowException as exc:
            exc.message = f"Failed to predict data '{data}'. \nError: {exc.message}"
            raise
    # MLflow ignores columns the signature does not name; so do we here (not on the platform's own API).
    scored = dp.predictor.predict(inputs, route="mlflow", allow_extra=True, request_id=request_id())
    values = scored.predictions.values()
    return Response(json.dumps({"predictions": values.tolist()}), status=200, mimetype="application/json")


def plain_numeric_matrix(raw: bytes, names: list[str]) -> np.ndarray | None:
    """The float64 matrix MLflow would parse `raw` into, when it is a JSON `dataframe_split` with exactly
    `names` as columns (or `dataframe_records` with exactly those keys), every value a finite int or float;
    None for anything else (which then goes through MLflow's own parsing, errors included)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict) or len(doc) != 1:
        return None
    if "dataframe_split" in doc:
        split = doc["dataframe_split"]
        if not isinstance(split, dict) or split.keys() != {"columns", "data"} or split["columns"] != names:
            return None
        rows = split["data"]
    elif "dataframe_records" in doc:
        records = doc["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) and r.keys() == set(names)
                                                    for r in records):
            return None
        rows = [[r[n] for n in names] for r in records]
    else:
        return None
    width = len(names)
    if not isinstance(rows, list) or not rows or not all(
            isinstance(row, list) and len(row) == width and all(type(v) is float or is_bigint(v) for v in row)
            for row in rows):
        return None  # bool is not int here: `type(True) is int` is False
    try:
        matrix = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        return None
    return matrix if bool(np.isfinite(matrix).all()) else None
