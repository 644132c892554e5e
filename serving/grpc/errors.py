"""The services' failures as gRPC status codes: the gRPC form's one error mapping (its REST twin is
serving/errors.py). A client's mistake is INVALID_ARGUMENT or NOT_FOUND, never INTERNAL or UNKNOWN."""

from __future__ import annotations

import grpc

from scoring.encoding import InputError
from serving import failures as f

_CODES: dict[type[Exception], grpc.StatusCode] = {
    InputError: grpc.StatusCode.INVALID_ARGUMENT,
    f.TooMany: grpc.StatusCode.INVALID_ARGUMENT,  # SERVING_MAX_ROWS: the client sent too much, not a server limit hit
    f.NotFound: grpc.StatusCode.NOT_FOUND,
    f.VersionNotLoaded: grpc.StatusCode.NOT_FOUND,
    f.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    f.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    f.ModelNotLoaded: grpc.StatusCode.UNAVAILABLE,
    f.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    f.QueueUnavailable: grpc.StatusCode.UNAVAILABLE,
    f.Refused: grpc.StatusCode.FAILED_PRECONDITION,
    f.ServingFailure: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_of(exc: InputError | f.ServingFailure) -> grpc.StatusCode:
    return next(_CODES[c] for c in type(exc).__mro__ if c in _CODES)

