"""Open Inference requests built as a client builds them, for tests and benches: per-feature tensors for
`tritonclient.grpc` (raw contents, as it sends them) and the same tensors as typed contents in a plain
`ModelInferRequest` (what another gRPC stub may send)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import np_to_triton_dtype

from scoring.spec import ModelSpec

_TYPED = {"INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def feature_values(spec: ModelSpec, records: list[dict[str, Any]]) -> list[tuple[str, np.ndarray]]:
    """(feature, values) per feature: categories as UTF-8 bytes ('' for missing), numbers as INT64 / FP32 as the
    model's metadata declares, FP64 with NaN where a value is missing (a tensor has no null)."""
    out = []
    for f in spec.features:
        values = [r.get(f.name) for r in records]
        if f.type == "category":
            arr = np.array([(v or "").encode() for v in values], dtype=np.object_)
        elif any(v is None for v in values):
            arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        else:
            arr = np.array(values, dtype=np.int64 if f.type == "int" else np.float32)
        out.append((f.name, arr))
    return out


def triton_inputs(spec: ModelSpec, records: list[dict[str, Any]]) -> list[tg.InferInput]:
    out = []
    for name, arr in feature_values(spec, records):
        t = tg.InferInput(name, [len(arr)], np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def typed_request(spec: ModelSpec, records: list[dict[str, Any]], model: str | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model or spec.name)
    for name, arr in feature_values(spec, records):
        datatype = np_to_triton_dtype(arr.dtype)
        t = req.inputs.add(name=name, datatype=datatype, shape=[len(arr)])
        if datatype == "BYTES":
            t.contents.bytes_contents.extend(arr.tolist())
        else:
            getattr(t.contents, _TYPED[datatype]).extend(arr.tolist())
    return req


def matrix_request(model: str, matrix: np.ndarray) -> pb.ModelInferRequest:
    """One 2-D FP32 tensor in the spec's feature order (categories as codes), as raw contents."""
    req = pb.ModelInferRequest(model_name=model, raw_input_contents=[matrix.astype("<f4").tobytes()])
    req.inputs.add(name="input", datatype="FP32", shape=list(matrix.shape))
    return req
