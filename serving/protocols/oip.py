"""The Open Inference Protocol (KServe v2 / Triton) REST API, with JSON tensors and the binary tensor extension.

Inputs: one tensor per feature (name = feature, shape [N] or [N, 1]; category features as BYTES strings or
integer codes), or one 2-D numeric tensor [N, n_features] in the spec's feature order with categories as codes.
Outputs: `score` (FP32) and `label` (INT64) for a classifier, `prediction` (FP32) for a regressor.
Errors: `{"error": "..."}`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from scoring.encoding import InputError, encode_columns
from scoring.spec import ModelSpec
from serving.blueprints.v1 import loaded_scorer
from serving.errors import ApiError
from serving.metrics import ROWS
from serving.middleware import require_token
from serving.requests_json import check_rows
from serving.state import state

bp = Blueprint("oip", __name__)

SERVER_NAME = "model-serving-platform"
SERVER_VERSION = "0.1.0"
_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


@bp.errorhandler(ApiError)
def _on_api(exc: ApiError) -> Response:
    return _error(exc.status, exc.message, exc.headers)


@bp.errorhandler(InputError)
def _on_input(exc: InputError) -> Response:
    return _error(400, str(exc))


@bp.errorhandler(HTTPException)
def _on_http(exc: HTTPException) -> Response:
    return _error(exc.code or 400, exc.description or exc.name)


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


def _check_model(model: str) -> ModelSpec:
    spec = state().spec
    if model != spec.name:
        raise ApiError(404, "unknown_model", f"unknown model '{model}': this server serves '{spec.name}'")
    return spec


def _outputs(spec: ModelSpec) -> list[dict[str, Any]]:
    if spec.is_classifier:
        return [{"name": "score", "datatype": "FP32", "shape": [-1]}, {"name": "label", "datatype": "INT64",
                                                                       "shape": [-1]}]
    return [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]


def _inputs(spec: ModelSpec) -> list[dict[str, Any]]:
    types = {"int": "INT64", "float": "FP32", "category": "BYTES"}
    return [{"name": f.name, "datatype": types[f.type], "shape": [-1]} for f in spec.features]


@bp.get("/v2/health/live")
def live() -> Response:
    return jsonify({"live": True})


@bp.get("/v2/health/ready")
def ready() -> Response:
    ok = state().holder.current is not None
    return jsonify({"ready": ok}), (200 if ok else 503)


@bp.get("/v2")
def server_metadata() -> Response:
    return jsonify({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})


@bp.get("/v2/models/<model>")
@bp.get("/v2/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> Response:
    spec = _check_model(model)
    scorer = state().holder.current
    loaded = scorer.version if scorer is not None else None
    if version is not None and version != loaded:
        raise ApiError(404, "unknown_version", f"model '{model}' version {version} is not loaded (loaded: {loaded})")
    return jsonify({"name": spec.name, "versions": [loaded] if loaded else [], "platform": "xgboost",
                    "inputs": _inputs(spec), "outputs": _outputs(spec)})


@bp.get("/v2/models/<model>/ready")
@bp.get("/v2/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> Response:
    spec = _check_model(model)
    scorer = state().holder.current
    ok = scorer is not None and (version is None or version == scorer.version)
    return jsonify({"name": spec.name, "ready": ok}), (200 if ok else 503)


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
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise _bad("an inference request is a JSON object with a non-empty 'inputs' list")
    return doc, binary


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
            or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad("each input needs a 'name', a 'datatype' and a 'shape' (list of non-negative integers)")
    if datatype != "BYTES" and datatype not in _NUMPY:
        raise _bad(f"input '{name}': unsupported datatype {datatype!r}")
    count = int(np.prod(shape)) if shape else 1
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        chunk = binary[offset:offset + int(size)]
        if len(chunk) != int(size):
            raise _bad(f"input '{name}': binary_data_size {size} runs past the end of the body")
        offset += int(size)
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


@bp.post("/v2/models/<model>/infer")
@bp.post("/v2/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> Response:
    st = state()
    require_token(st.settings.api_token)
    spec = _check_model(model)
    doc, binary = _read_request()
    columns, n_rows = _columns(spec, doc, binary)
    check_rows(n_rows, st.settings.max_rows)
    scorer = loaded_scorer(st)
    if version is not None and version != scorer.version:
        raise ApiError(404, "unknown_version", f"model '{model}' version {version} is not loaded "
                                               f"(loaded: {scorer.version})")
    preds = scorer.predict_matrix(encode_columns(spec, columns).matrix)
    ROWS.labels(spec.name, "live").inc(len(preds))
    produced = {"score": preds.scores, "label": preds.labels} if spec.is_classifier else {"prediction": preds.scores}
    dtypes = {"score": ("FP32", np.float32), "label": ("INT64", np.int64), "prediction": ("FP32", np.float32)}
    wanted = doc.get("outputs")
    binary_default = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    if wanted is None:
        requested = [(name, binary_default) for name in produced]
    else:
        if not isinstance(wanted, list):
            raise _bad("'outputs' must be a list of objects with a 'name'")
        requested = []
        for o in wanted:
            name = o.get("name") if isinstance(o, dict) else None
            if name not in produced:
                raise _bad(f"unknown output {name!r} (model '{spec.name}' produces {list(produced)})")
            requested.append((name, bool((o.get("parameters") or {}).get("binary_data", binary_default))))
    outputs, blobs = [], []
    for name, as_binary in requested:
        datatype, dtype = dtypes[name]
        arr = np.asarray(produced[name], dtype=dtype)
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(arr)]}
        if as_binary:
            blob = arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = arr.tolist()
        outputs.append(out)
    result: dict[str, Any] = {"model_name": spec.name, "model_version": scorer.version, "outputs": outputs}
    if "id" in doc:
        result["id"] = doc["id"]
    head = json.dumps(result).encode()
    if not blobs:
        return Response(head, status=200, mimetype="application/json")
    resp = Response(head + b"".join(blobs), status=200, mimetype="application/octet-stream")
    resp.headers["Inference-Header-Content-Length"] = str(len(head))
    return resp
