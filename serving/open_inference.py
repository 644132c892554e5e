"""The Open Inference Protocol (KServe v2) without a transport, shared by its REST (serving/protocols/oip.py) and
gRPC (serving/grpc/) forms: the server's identity, the model's input and output tensors, raw (little-endian)
tensor data, and the input tensors turned into the named columns the prediction function takes. A malformed
tensor raises the encoder's InputError, its message naming the input.

Inputs: one tensor per feature (name = feature, shape [N] or [N, 1]; category features as BYTES strings or
integer codes), or one 2-D numeric tensor [N, n_features] in the spec's feature order with categories as codes.
Outputs: `score` (FP32) and `label` (INT64) for a classifier, `prediction` (FP32) for a regressor.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring.encoding import InputError
from scoring.scorer import Contributions, Predictions
from scoring.spec import ModelSpec
from serving import SERVER_NAME, SERVER_VERSION  # noqa: F401  (re-exported: the protocols read them here)
from serving.values import shown

EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "xgboost"
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64}
DATATYPES = (*NUMPY, "BYTES")
_FEATURE_TYPES = {"int": "INT64", "float": "FP32", "category": "BYTES"}
_OUTPUT_TYPES = {"score": ("FP32", np.float32), "label": ("INT64", np.int64), "prediction": ("FP32", np.float32)}


@dataclass(frozen=True)
class Tensor:
    """One decoded input tensor: flat values (a list, or a numpy array from raw data) and its shape."""

    name: str
    datatype: str
    shape: list[int]
    values: Any


def input_metadata(spec: ModelSpec) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape) of every input the model takes: one per feature, any number of rows."""
    return [(f.name, _FEATURE_TYPES[f.type], [-1]) for f in spec.features]


def output_names(spec: ModelSpec) -> list[str]:
    return ["score", "label"] if spec.is_classifier else ["prediction"]


def output_metadata(spec: ModelSpec) -> list[tuple[str, str, list[int]]]:
    return [(name, _OUTPUT_TYPES[name][0], [-1]) for name in output_names(spec)]


def outputs(spec: ModelSpec, preds: Predictions) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (datatype, values) of every output the model produces, in the documented order."""
    produced = {"score": preds.scores, "label": preds.labels} if spec.is_classifier else {"prediction": preds.scores}
    return {name: (_OUTPUT_TYPES[name][0], np.asarray(values, dtype=_OUTPUT_TYPES[name][1]))
            for name, values in produced.items()}


CONTRIBUTIONS = "contributions"  # the output a client asks for by name (REST): each row's reasons


def contributions_metadata(spec: ModelSpec) -> dict[str, Any]:
    """The on-request output: [N, n_features + 1] FP32, the spec's features in order, then the bias."""
    return {"name": CONTRIBUTIONS, "datatype": "FP32", "shape": [-1, len(spec.features) + 1],
            "parameters": {"columns": [*spec.feature_names, "bias"], "on_request": True}}


def contributions_tensor(found: Contributions) -> tuple[str, np.ndarray]:
    """(datatype, values) of the contributions output; a row sums to its margin."""
    return "FP32", np.column_stack([found.values, found.bias]).astype(np.float32)


def little_endian(values: np.ndarray) -> bytes:
    """An output's raw tensor data."""
    return values.astype(values.dtype.newbyteorder("<")).tobytes()


def bad(message: str) -> InputError:
    return InputError(message)


def check_header(name: Any, datatype: Any, shape: Any) -> int:
    """The element count of a well-formed tensor header (raises naming what is wrong)."""
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list) \
            or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"each input needs a 'name', a 'datatype' and a 'shape' (list of non-negative integers); got "
                  f"name {shown(name)}, datatype {shown(datatype)}, shape {shown(shape)}")
    if datatype not in DATATYPES:
        raise bad(f"input '{name}': unsupported datatype {datatype!r} (one of {', '.join(DATATYPES)})")
    return math.prod(shape)


def raw_values(name: str, datatype: str, chunk: bytes) -> Any:
    """Raw tensor data (the REST binary extension's and gRPC's raw_input_contents): little-endian numbers, or
    BYTES elements each prefixed by its 4-byte little-endian length."""
    if datatype == "BYTES":
        out, i = [], 0
        while i < len(chunk):
            if i + 4 > len(chunk):
                raise bad(f"input '{name}': malformed BYTES tensor: truncated length prefix")
            (n,) = struct.unpack_from("<I", chunk, i)
            i += 4
            out.append(chunk[i:i + n].decode("utf-8", errors="replace"))
            i += n
        return out
    dtype = np.dtype(NUMPY[datatype]).newbyteorder("<")
    if len(chunk) % dtype.itemsize:
        raise bad(f"input '{name}': {len(chunk)} bytes is not a whole number of {datatype} values")
    return np.frombuffer(chunk, dtype=dtype)


def check_count(tensor: Tensor) -> Tensor:
    count = math.prod(tensor.shape)
    if len(tensor.values) != count:
        raise bad(f"input '{tensor.name}': shape {tensor.shape} needs {count} values, got {len(tensor.values)}")
    return tensor


def columns(spec: ModelSpec, tensors: list[Tensor]) -> tuple[dict[str, Any], int]:
    """The named columns of the model's features, and the number of rows."""
    names = spec.feature_names
    if len(tensors) == 1 and len(tensors[0].shape) == 2 and tensors[0].name not in names:
        t = tensors[0]
        if t.datatype == "BYTES":
            raise bad(f"input '{t.name}': a 2-D input must be numeric (categories as integer codes)")
        if t.shape[1] != len(names):
            raise bad(f"input '{t.name}': a 2-D input needs {len(names)} columns in the order {names}, "
                      f"got shape {t.shape}")
        try:
            matrix = np.asarray(t.values, dtype=object if isinstance(t.values, list) else None).reshape(t.shape)
        except (TypeError, ValueError) as exc:
            raise bad(f"input '{t.name}': values must be numbers: {exc}") from exc
        return {n: matrix[:, j] for j, n in enumerate(names)}, t.shape[0]
    out: dict[str, Any] = {}
    rows = None
    for t in tensors:
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
            raise bad(f"input '{t.name}': a per-feature input has shape [N] or [N, 1], got {t.shape}")
        if rows is not None and t.shape[0] != rows:
            raise bad(f"input '{t.name}': {t.shape[0]} rows, but other inputs have {rows}")
        rows = t.shape[0]
        if t.datatype == "BYTES":  # tensors have no null: an empty string is a missing value
            out[t.name] = [None if v in ("", b"") else v for v in t.values]
        else:
            out[t.name] = t.values  # as sent (a uint64 stays an integer): the encoder converts and checks
    return out, int(rows or 0)
