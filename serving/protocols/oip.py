"""The Open Inference Protocol (KServe v2 / Triton) REST API, with JSON tensors and the binary tensor extension.

Inputs: one tensor per feature (name = feature, shape [N] or [N, 1]; category features as BYTES strings or
integer codes), or one 2-D numeric tensor [N, n_features] in the spec's feature order with categories as codes.
Outputs: `score` (FP32) and `label` (INT64) for a classifier, `prediction` (FP32) for a regressor; on request
(listed in `outputs`, as the protocol asks for non-default outputs) `contributions` (FP32, [N, n_features + 1]):
each row's per-feature contributions in margin space in the spec's feature order, then the bias; a row sums to
its margin. The column names are in the model metadata (the output's `parameters.columns`). An output
parameter `method` (`exact`, the default, or `approx`) chooses the algorithm, as in the v1 API.
Errors: `{"error": "..."}`.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from flask import Response, request

from scoring.encoding import encode_columns
from scoring.scorer import EXPLAIN_METHODS, ExplainRequest
from scoring.spec import ModelSpec
from serving.dataplane import plane
from serving.errors import ApiError
from serving.routes import PUBLIC, Protocol, Scope, json_answer
from serving.wire import dumps, json_response, loads, shown

SERVER_NAME = "model-serving-platform"
SERVER_VERSION = "0.1.0"
_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64}


def _render(exc: ApiError) -> Response:
    return json_response({"error": exc.message}, exc.status, exc.headers)


ERROR_SCHEMA = {"type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {"type": "string"}}}
api = Protocol("oip", "The Open Inference Protocol (KServe v2 / Triton) REST API", ERROR_SCHEMA, _render,
               input_error=lambda exc: _bad(str(exc)))


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


CONTRIBUTIONS = "contributions"


def _outputs(spec: ModelSpec) -> list[dict[str, Any]]:
    reasons = {"name": CONTRIBUTIONS, "datatype": "FP32", "shape": [-1, len(spec.features) + 1],
               "parameters": {"columns": [*spec.feature_names, "bias"], "on_request": True}}
    if spec.is_classifier:
        return [{"name": "score", "datatype": "FP32", "shape": [-1]}, {"name": "label", "datatype": "INT64",
                                                                       "shape": [-1]}, reasons]
    return [{"name": "prediction", "datatype": "FP32", "shape": [-1]}, reasons]


def _contributions(scorer: Any, matrix: np.ndarray, method: Any) -> np.ndarray:
    if method not in EXPLAIN_METHODS:
        raise _bad(f"output '{CONTRIBUTIONS}': parameters.method must be one of {list(EXPLAIN_METHODS)}, got "
                   f"{shown(method)}")
    found = plane().explain(scorer, matrix, ExplainRequest(None, method))
    return np.column_stack([found.values, found.bias]).astype(np.float32)


def _inputs(spec: ModelSpec) -> list[dict[str, Any]]:
    types = {"int": "INT64", "float": "FP32", "category": "BYTES"}
    return [{"name": f.name, "datatype": types[f.type], "shape": [-1]} for f in spec.features]


_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"],
           "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                          "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
                          "parameters": {"type": "object"}}}
_INFER_REQUEST = {"type": "object", "required": ["inputs"],
                  "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                                 "outputs": {"type": "array", "items": {"type": "object"}},
                                 "parameters": {"type": "object"}}}
_INFER_RESPONSE = {"type": "object", "required": ["model_name", "model_version", "outputs"],
                   "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                                  "id": {"type": "string"}, "outputs": {"type": "array", "items": _TENSOR}}}
_METADATA = {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
             "properties": {"name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                            "platform": {"type": "string"}, "inputs": {"type": "array"},
                            "outputs": {"type": "array"}}}
_READY = {"type": "object", "required": ["ready"], "properties": {"name": {"type": "string"},
                                                                  "ready": {"type": "boolean"}}}
_NOT_READY = json_answer("Not ready", _READY)


@api.route("GET", "/v2/health/live", auth=PUBLIC, summary="OIP server live",
           responses={200: json_answer("Live", {"type": "object", "properties": {"live": {"type": "boolean"}}})})
def live() -> Response:
    return json_response({"live": True})


@api.route("GET", "/v2/health/ready", auth=PUBLIC, summary="OIP server ready (a model version is loaded)",
           responses={200: json_answer("Ready", _READY), 503: _NOT_READY})
def ready() -> Response:
    ok = plane().holder.current is not None
    return json_response({"ready": ok}, 200 if ok else 503)


@api.route("GET", "/v2", auth=PUBLIC, summary="OIP server metadata",
           responses={200: json_answer("Server metadata", {"type": "object", "required": ["name", "version"]})})
def server_metadata() -> Response:
    return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})


def _loaded_version() -> str | None:
    scorer = plane().holder.current
    return scorer.version if scorer is not None else None


@api.route("GET", "/v2/models/<model>", auth=PUBLIC, summary="OIP model metadata",
           responses={200: json_answer("Model metadata", _METADATA)}, errors=(404,))
@api.route("GET", "/v2/models/<model>/versions/<version>", auth=PUBLIC, summary="OIP model metadata of a version",
           responses={200: json_answer("Model metadata", _METADATA)}, errors=(404,), endpoint="version_metadata")
def model_metadata(model: str, version: str | None = None) -> Response:
    spec = plane().spec
    loaded = _loaded_version()
    if version is not None and version != loaded:
        raise ApiError(404, "unknown_version", f"model '{model}' version {version} is not loaded (loaded: {loaded})")
    return json_response({"name": spec.name, "versions": [loaded] if loaded else [], "platform": "xgboost",
                          "inputs": _inputs(spec), "outputs": _outputs(spec)})


@api.route("GET", "/v2/models/<model>/ready", auth=PUBLIC, summary="OIP model ready",
           responses={200: json_answer("Ready", _READY), 503: _NOT_READY}, errors=(404,))
@api.route("GET", "/v2/models/<model>/versions/<version>/ready", auth=PUBLIC, summary="OIP model version ready",
           responses={200: json_answer("Ready", _READY), 503: _NOT_READY}, errors=(404,), endpoint="version_ready")
def model_ready(model: str, version: str | None = None) -> Response:
    loaded = _loaded_version()
    if version is not None and loaded is not None and version != loaded:  # as the version's metadata: 404
        raise ApiError(404, "unknown_version", f"model '{model}' version {version} is not loaded (loaded: {loaded})")
    ok = loaded is not None and (version is None or version == loaded)
    return json_response({"name": plane().spec.name, "ready": ok}, 200 if ok else 503)


def _read_request() -> tuple[dict[str, Any], bytes]:
    body = request.get_data(cache=False)
    header_len = request.headers.get("Inference-Header-Content-Length")
    if header_len is not None:
        try:
            n = int(header_len)
        except ValueError as exc:
            raise _bad(f"Inference-Header-Content-Length must be an integer, got {header_len!r}") from exc
        if not 0 < n <= len(body):
            raise _bad(f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        doc = loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise _bad("an inference request is a JSON object with a non-empty 'inputs' list")
    if "id" in doc and not isinstance(doc["id"], str):
        raise _bad(f"'id' must be a string, got {shown(doc['id'])}")
    _object_or_absent(doc, "parameters", "the request")
    params = doc.get("parameters") or {}
    if not isinstance(params.get("binary_data_output", False), bool):
        raise _bad(f"parameters.binary_data_output must be true or false, got {shown(params['binary_data_output'])}")
    return doc, binary


def _object_or_absent(obj: dict[str, Any], field: str, where: str) -> None:
    if obj.get(field) is not None and not isinstance(obj[field], dict):
        raise _bad(f"{where}: '{field}' must be an object, got {shown(obj[field])}")


def _deserialize_bytes(raw: bytes) -> list[str]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise _bad("malformed BYTES tensor: truncated length prefix")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        out.append(raw[i:i + n].decode("utf-8", errors="replace"))
        i += n
    return out


def _tensor_values(tensor: dict[str, Any], binary: bytes, offset: int) -> tuple[Any, list[int], int]:
    """(flat values, shape, new offset into the binary section)."""
    name = tensor.get("name")
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list) \
            or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(f"each input needs a 'name', a 'datatype' and a 'shape' (list of non-negative integers); got "
                   f"name {shown(name)}, datatype {shown(datatype)}, shape {shown(shape)}")
    if datatype != "BYTES" and datatype not in _NUMPY:
        raise _bad(f"input '{name}': unsupported datatype {datatype!r}")
    count = math.prod(shape)
    _object_or_absent(tensor, "parameters", f"input '{name}'")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise _bad(f"input '{name}': binary_data_size must be a non-negative integer, got {shown(size)}")
        chunk = binary[offset:offset + size]
        if len(chunk) != size:
            raise _bad(f"input '{name}': binary_data_size {size} runs past the end of the body")
        offset += size
        if datatype == "BYTES":
            values: Any = _deserialize_bytes(chunk)
        else:
            dtype = np.dtype(_NUMPY[datatype]).newbyteorder("<")
            if len(chunk) % dtype.itemsize:
                raise _bad(f"input '{name}': {len(chunk)} bytes is not a whole number of {datatype} values")
            values = np.frombuffer(chunk, dtype=dtype)
    else:
        if "data" not in tensor:
            raise _bad(f"input '{name}': no 'data' (and no binary_data_size)")
        values = np.asarray(tensor["data"], dtype=object).reshape(-1).tolist()
    if len(values) != count:
        raise _bad(f"input '{name}': shape {shape} needs {count} values, got {len(values)}")
    return values, shape, offset


def _columns(spec: ModelSpec, doc: dict[str, Any], binary: bytes) -> tuple[dict[str, Any], int]:
    offset = 0
    tensors = []
    for t in doc["inputs"]:
        if not isinstance(t, dict):
            raise _bad("each entry of 'inputs' must be an object")
        values, shape, offset = _tensor_values(t, binary, offset)
        tensors.append((t["name"], t["datatype"], values, shape))
    names = spec.feature_names
    if len(tensors) == 1 and len(tensors[0][3]) == 2 and tensors[0][0] not in names:
        name, datatype, values, shape = tensors[0]
        if datatype == "BYTES":
            raise _bad(f"input '{name}': a 2-D input must be numeric (categories as integer codes)")
        if shape[1] != len(names):
            raise _bad(f"input '{name}': a 2-D input needs {len(names)} columns in the order {names}, "
                       f"got shape {shape}")
        try:
            matrix = np.asarray(values, dtype=np.float64).reshape(shape)
        except (TypeError, ValueError) as exc:
            raise _bad(f"input '{name}': values must be numbers: {exc}") from exc
        return {n: matrix[:, j] for j, n in enumerate(names)}, shape[0]
    columns: dict[str, Any] = {}
    rows = None
    for name, datatype, values, shape in tensors:
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise _bad(f"input '{name}': a per-feature input has shape [N] or [N, 1], got {shape}")
        if rows is not None and shape[0] != rows:
            raise _bad(f"input '{name}': {shape[0]} rows, but other inputs have {rows}")
        rows = shape[0]
        if datatype == "BYTES":  # tensors have no null: an empty string is a missing value
            columns[name] = [None if v in ("", b"") else v for v in values]
        else:
            columns[name] = values if isinstance(values, list) else values.astype(np.float64)
    return columns, int(rows or 0)


_INFER = {"responses": {200: json_answer("Output tensors (JSON, or the binary extension as "
                                        "application/octet-stream)", _INFER_RESPONSE)},
          "errors": (400, 404, 413, 503), "request": {"application/json": _INFER_REQUEST,
                                                       "application/octet-stream": None}}


@api.route("POST", "/v2/models/<model>/infer", auth=Scope("predict"),
           summary="OIP inference (JSON tensors, binary tensor extension)", **_INFER)
@api.route("POST", "/v2/models/<model>/versions/<version>/infer", auth=Scope("predict"),
           summary="OIP inference on a version", endpoint="version_infer", **_INFER)
def infer(model: str, version: str | None = None) -> Response:
    spec = plane().spec
    doc, binary = _read_request()
    columns, n_rows = _columns(spec, doc, binary)
    encoded: list[np.ndarray] = []  # the matrix scored, kept for the contributions

    def matrix(_: Any) -> np.ndarray:
        encoded.append(encode_columns(spec, columns).matrix)
        return encoded[0]

    scorer, preds = plane().predict_encoded(n_rows, matrix, route="oip", version=version)
    produced = {"score": preds.scores, "label": preds.labels} if spec.is_classifier else {"prediction": preds.scores}
    dtypes = {"score": ("FP32", np.float32), "label": ("INT64", np.int64), "prediction": ("FP32", np.float32),
              CONTRIBUTIONS: ("FP32", np.float32)}
    wanted = doc.get("outputs")
    binary_default = (doc.get("parameters") or {}).get("binary_data_output", False)
    if wanted is None:
        requested = [(name, binary_default) for name in produced]
    else:
        if not isinstance(wanted, list):
            raise _bad("'outputs' must be a list of objects with a 'name'")
        requested = []
        for o in wanted:
            name = o.get("name") if isinstance(o, dict) else None
            if not isinstance(name, str) or name not in (*produced, CONTRIBUTIONS):
                raise _bad(f"unknown output {shown(name)} (model '{spec.name}' produces "
                           f"{[*produced, CONTRIBUTIONS]})")
            _object_or_absent(o, "parameters", f"output '{name}'")
            if name == CONTRIBUTIONS:
                produced[name] = _contributions(scorer, encoded[0], (o.get("parameters") or {}).get("method",
                                                                                                     "exact"))
            as_binary = (o.get("parameters") or {}).get("binary_data", binary_default)
            if not isinstance(as_binary, bool):
                raise _bad(f"output '{name}': parameters.binary_data must be true or false, got {shown(as_binary)}")
            requested.append((name, as_binary))
    outputs, blobs = [], []
    for name, as_binary in requested:
        datatype, dtype = dtypes[name]
        arr = np.asarray(produced[name], dtype=dtype)
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if as_binary:
            blob = arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = arr.reshape(-1).tolist()  # row-major, as the protocol lays out tensors
        outputs.append(out)
    result: dict[str, Any] = {"model_name": spec.name, "model_version": scorer.version, "outputs": outputs}
    if "id" in doc:
        result["id"] = doc["id"]
    head = dumps(result).encode()
    if not blobs:
        return Response(head, status=200, mimetype="application/json")
    resp = Response(head + b"".join(blobs), status=200, mimetype="application/octet-stream")
    resp.headers["Inference-Header-Content-Length"] = str(len(head))
    return resp
