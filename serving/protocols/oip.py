"""The Open Inference Protocol (KServe v2 / Triton) REST API, with JSON tensors and the binary tensor extension.

The tensors (inputs, outputs, raw data) are serving/open_inference.py's, shared with the gRPC form (serving/grpc/).
Outputs: the model's (open_inference.outputs) and, on request (listed in `outputs`, as the protocol asks for
non-default outputs), `contributions` (FP32, [N, n_features + 1]): each row's per-feature contributions in margin
space in the spec's feature order, then the bias; a row sums to its margin. The column names are in the model
metadata (the output's `parameters.columns`). An output parameter `method` (`exact`, the default, or `approx`)
chooses the algorithm, as in the v1 API.
Errors: `{"error": "..."}`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Response, request

from scoring.scorer import EXPLAIN_METHODS, ExplainRequest
from scoring.spec import ModelSpec
from serving import open_inference as tensors
from serving.dataplane import plane, request_id
from serving.errors import ApiError
from serving.routes import PUBLIC, Protocol, Scope, json_answer
from serving.values import shown
from serving.wire import dumps, json_response, loads


def _render(exc: ApiError) -> Response:
    return json_response({"error": exc.message}, exc.status, exc.headers)


ERROR_SCHEMA = {"type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {"type": "string"}}}
api = Protocol("oip", "The Open Inference Protocol (KServe v2 / Triton) REST API", ERROR_SCHEMA, _render,
               input_error=lambda exc: _bad(str(exc)))


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


def _described(meta: list[tuple[str, str, list[int]]]) -> list[dict[str, Any]]:
    return [{"name": name, "datatype": datatype, "shape": shape} for name, datatype, shape in meta]


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
    return json_response({"name": tensors.SERVER_NAME, "version": tensors.SERVER_VERSION,
                          "extensions": list(tensors.EXTENSIONS)})


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
    return json_response({"name": spec.name, "versions": [loaded] if loaded else [], "platform": tensors.PLATFORM,
                          "inputs": _described(tensors.input_metadata(spec)),
                          "outputs": [*_described(tensors.output_metadata(spec)),
                                      tensors.contributions_metadata(spec)]})


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


def _tensor(tensor: dict[str, Any], binary: bytes, offset: int) -> tuple[tensors.Tensor, int]:
    """One input tensor of the JSON header (its data inline, or in the binary section), and the new offset."""
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    tensors.check_header(name, datatype, shape)
    _object_or_absent(tensor, "parameters", f"input '{name}'")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise _bad(f"input '{name}': binary_data_size must be a non-negative integer, got {shown(size)}")
        chunk = binary[offset:offset + size]
        if len(chunk) != size:
            raise _bad(f"input '{name}': binary_data_size {size} runs past the end of the body")
        offset += size
        values: Any = tensors.raw_values(name, datatype, chunk)
    else:
        if "data" not in tensor:
            raise _bad(f"input '{name}': no 'data' (and no binary_data_size)")
        values = np.asarray(tensor["data"], dtype=object).reshape(-1).tolist()
    return tensors.check_count(tensors.Tensor(name, datatype, shape, values)), offset


def _columns(spec: ModelSpec, doc: dict[str, Any], binary: bytes) -> tuple[dict[str, Any], int]:
    offset = 0
    decoded = []
    for t in doc["inputs"]:
        if not isinstance(t, dict):
            raise _bad("each entry of 'inputs' must be an object")
        tensor, offset = _tensor(t, binary, offset)
        decoded.append(tensor)
    return tensors.columns(spec, decoded)


_INFER = {"responses": {200: json_answer("Output tensors (JSON, or the binary extension as "
                                        "application/octet-stream)", _INFER_RESPONSE)},
          "errors": (400, 404, 413, 503), "request": {"application/json": _INFER_REQUEST,
                                                       "application/octet-stream": None}}


def _explain_asked(wanted: Any) -> ExplainRequest | None:
    """The contributions output, when the request lists it: its `method` parameter (exact by default)."""
    for o in wanted if isinstance(wanted, list) else ():
        if isinstance(o, dict) and o.get("name") == tensors.CONTRIBUTIONS:
            params = o.get("parameters")
            method = params.get("method", "exact") if isinstance(params, dict) else "exact"
            if method not in EXPLAIN_METHODS:
                raise _bad(f"output '{tensors.CONTRIBUTIONS}': parameters.method must be one of "
                           f"{list(EXPLAIN_METHODS)}, got {shown(method)}")
            return ExplainRequest(None, method)
    return None


@api.route("POST", "/v2/models/<model>/infer", auth=Scope("predict"),
           summary="OIP inference (JSON tensors, binary tensor extension)", **_INFER)
@api.route("POST", "/v2/models/<model>/versions/<version>/infer", auth=Scope("predict"),
           summary="OIP inference on a version", endpoint="version_infer", **_INFER)
def infer(model: str, version: str | None = None) -> Response:
    spec = plane().spec
    doc, binary = _read_request()
    columns, n_rows = _columns(spec, doc, binary)
    wanted = doc.get("outputs")
    explain = _explain_asked(wanted)
    scored = plane().predictor.predict(columns, route="oip", n_rows=n_rows, version=version, request_id=request_id(),
                                       explain=explain)
    produced = tensors.outputs(spec, scored.predictions)
    if scored.contributions is not None:
        produced[tensors.CONTRIBUTIONS] = tensors.contributions_tensor(scored.contributions)
    binary_default = (doc.get("parameters") or {}).get("binary_data_output", False)
    if wanted is None:
        requested = [(name, binary_default) for name in produced]
    else:
        if not isinstance(wanted, list):
            raise _bad("'outputs' must be a list of objects with a 'name'")
        requested = []
        for o in wanted:
            name = o.get("name") if isinstance(o, dict) else None
            if not isinstance(name, str) or name not in produced:
                raise _bad(f"unknown output {shown(name)} (model '{spec.name}' produces {list(produced)})")
            _object_or_absent(o, "parameters", f"output '{name}'")
            as_binary = (o.get("parameters") or {}).get("binary_data", binary_default)
            if not isinstance(as_binary, bool):
                raise _bad(f"output '{name}': parameters.binary_data must be true or false, got {shown(as_binary)}")
            requested.append((name, as_binary))
    outputs, blobs = [], []
    for name, as_binary in requested:
        datatype, arr = produced[name]
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if as_binary:
            blob = tensors.little_endian(arr)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = arr.reshape(-1).tolist()  # row-major, as the protocol lays out tensors
        outputs.append(out)
    result: dict[str, Any] = {"model_name": spec.name, "model_version": scored.version, "outputs": outputs}
    if "id" in doc:
        result["id"] = doc["id"]
    head = dumps(result).encode()
    if not blobs:
        return Response(head, status=200, mimetype="application/json")
    resp = Response(head + b"".join(blobs), status=200, mimetype="application/octet-stream")
    resp.headers["Inference-Header-Content-Length"] = str(len(head))
    return resp
