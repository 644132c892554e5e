"""`inference.GRPCInferenceService`: health, metadata and ModelInfer (typed contents and raw_input_contents),
translated in and out of the prediction function; Triton's other methods (repository, shared memory, ...)
answer UNIMPLEMENTED, as the generated servicer does.

Auth comes from the route declarations of the REST form (serving/protocols/oip.py): each method takes the
auth of the REST route that does the same thing (ModelInfer: `POST /v2/models/<model>/infer`, scope
`predict`), the bearer token read from the `authorization` metadata. Every failure is turned into a status code
in one place (`_answer`, with serving/grpc/errors.py's mapping), with a message naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from scoring.encoding import InputError
from serving import open_inference as oi
from serving.auth import Authorizer
from serving.failures import ServingFailure, UnknownModel, VersionNotLoaded
from serving.grpc.errors import status_of
from serving.predict import Predictor
from serving.protocols import oip
from serving.routes import Scope

log = logging.getLogger(__name__)

# Each method's REST twin (an endpoint of serving/protocols/oip.py): its declaration says who may call it.
TWINS = {"ServerLive": "live", "ServerReady": "ready", "ServerMetadata": "server_metadata",
         "ModelReady": "model_ready", "ModelMetadata": "model_metadata", "ModelInfer": "infer"}

# Where each datatype's values travel in typed contents (FP16 has none: raw_input_contents only).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _scopes() -> dict[str, str | None]:
    """method -> the scope its REST twin declares (None: public). Fails at start-up if a twin is not declared."""
    routes = {r.endpoint: r for r in oip.api.routes}
    missing = sorted(m for m, endpoint in TWINS.items() if endpoint not in routes)
    if missing:
        raise RuntimeError(f"gRPC methods without a REST declaration to take their auth from: {missing}")
    return {m: (routes[e].auth.name if isinstance(routes[e].auth, Scope) else None) for m, e in TWINS.items()}


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, predictor: Predictor, authorizer: Authorizer) -> None:
        self.predictor = predictor
        self.spec = predictor.spec
        self.authorizer = authorizer
        self._scopes = _scopes()

    # ------------------------------------------------------------------ the one place errors become status codes

    def _answer(self, method: str, context: grpc.ServicerContext, build: Callable[[], Any]) -> Any:
        try:
            scope = self._scopes[method]
            if scope is not None and self.authorizer.enabled:
                self.authorizer.authorize(scope, _metadata(context, "authorization"))
            return build()
        except (InputError, ServingFailure) as exc:
            context.abort(status_of(exc), str(exc))
        except Exception:  # a bug, not the client's mistake: logged, answered INTERNAL without details
            log.exception("gRPC %s failed", method)
            context.abort(grpc.StatusCode.INTERNAL, f"{method} failed on the server; see its log")

    def _check_model(self, name: str, version: str) -> str | None:
        """The loaded version when `name` (and `version`, if not empty) is what this deployment serves."""
        if name != self.spec.name:
            raise UnknownModel(name, self.spec.name)
        scorer = self.predictor.holder.current
        loaded = scorer.version if scorer is not None else None
        if version and loaded is not None and version != loaded:
            raise VersionNotLoaded(f"model '{name}' version {version} is not loaded (loaded: {loaded})")
        return loaded

    # ------------------------------------------------------------------ health and metadata

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return self._answer("ServerLive", context, lambda: pb.ServerLiveResponse(live=True))

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return self._answer("ServerReady", context,
                            lambda: pb.ServerReadyResponse(ready=self.predictor.holder.current is not None))

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        def build() -> pb.ModelReadyResponse:
            loaded = self._check_model(request.name, request.version)
            return pb.ModelReadyResponse(ready=loaded is not None)
        return self._answer("ModelReady", context, build)

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
                       ) -> pb.ServerMetadataResponse:
        return self._answer("ServerMetadata", context, lambda: pb.ServerMetadataResponse(
            name=oi.SERVER_NAME, version=oi.SERVER_VERSION, extensions=list(oi.EXTENSIONS)))

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
                      ) -> pb.ModelMetadataResponse:
        def build() -> pb.ModelMetadataResponse:
            loaded = self._check_model(request.name, request.version)
            if request.version and loaded is None:  # as REST: a version that is not loaded is not found
                raise VersionNotLoaded(f"model '{request.name}' version {request.version} is not loaded "
                                       f"(loaded: None)")
            meta = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=self.spec.name, versions=[loaded] if loaded else [], platform=oi.PLATFORM,
                inputs=[meta(name=n, datatype=d, shape=s) for n, d, s in oi.input_metadata(self.spec)],
                outputs=[meta(name=n, datatype=d, shape=s) for n, d, s in oi.output_metadata(self.spec)])
        return self._answer("ModelMetadata", context, build)

    # ------------------------------------------------------------------ inference

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        return self._answer("ModelInfer", context, lambda: self._infer(request))

    def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        if request.model_name != self.spec.name:
            raise UnknownModel(request.model_name, self.spec.name)
        columns, n_rows = oi.columns(self.spec, _tensors(request))
        scored = self.predictor.predict(columns, route="oip-grpc", n_rows=n_rows,
                                        version=request.model_version or None, request_id=request.id or None)
        produced = oi.outputs(self.spec, scored.predictions)
        wanted = [o.name for o in request.outputs] or list(produced)
        for name in wanted:
            if name not in produced:
                raise InputError(f"outputs: unknown output {name!r} (model '{self.spec.name}' produces "
                                 f"{list(produced)})")
        response = pb.ModelInferResponse(model_name=self.spec.name, model_version=scored.version, id=request.id)
        for name in wanted:
            datatype, values = produced[name]
            response.outputs.add(name=name, datatype=datatype, shape=[len(values)])
            response.raw_output_contents.append(oi.little_endian(values))
        return response


def _metadata(context: grpc.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return ""


def _tensors(request: pb.ModelInferRequest) -> list[oi.Tensor]:
    """The request's input tensors, each from raw_input_contents (all inputs or none) or its typed contents."""
    if not request.inputs:
        raise InputError("inputs: an inference request needs at least one input tensor")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs (one per input, "
                         f"in order, or none)")
    out = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        oi.check_header(t.name, t.datatype, shape)
        if any(d < 0 for d in shape):
            raise InputError(f"input '{t.name}': shape {shape} has a negative dimension")
        values = oi.raw_values(t.name, t.datatype, raw[i]) if raw else _typed(t)
        out.append(oi.check_count(oi.Tensor(t.name, t.datatype, shape, values)))
    return out


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> Any:
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise InputError(f"input '{tensor.name}': {tensor.datatype} has no typed contents; send it in "
                         f"raw_input_contents")
    present = [f.name for f, _ in tensor.contents.ListFields()]
    others = [f for f in present if f != field]
    if others:
        raise InputError(f"input '{tensor.name}': datatype {tensor.datatype} takes its values in contents.{field}, "
                         f"got contents.{others[0]}")
    values = getattr(tensor.contents, field)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") for v in values]
    return np.asarray(values, dtype=oi.NUMPY[tensor.datatype])
