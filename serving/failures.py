"""What can go wrong serving a request, as typed exceptions with no HTTP in them.

The prediction function (serving/predict.py), lookups (serving/lookups.py) and job intake (serving/job_intake.py)
raise these (and the encoder's `scoring.encoding.InputError`); each protocol turns them into its own error shape
in one place: the platform's HTTP statuses in serving/errors.py (`from_failure`, used by v1, jobs, MLflow and OIP
REST), gRPC status codes in serving/grpc/errors.py.
"""

from __future__ import annotations


class ServingFailure(Exception):
    """A deliberate refusal: `code` is stable and machine-readable, the message names what is wrong (a subclass
    names its code in its class line: `class ModelNotLoaded(ServingFailure, code="model_not_loaded")`)."""

    code = "failure"

    def __init_subclass__(cls, code: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.row = row


class Unauthenticated(ServingFailure, code="unauthorized"):
    """No bearer token, or one no client holds."""


class Forbidden(ServingFailure, code="forbidden"):
    """A known client whose token does not grant the route's scope."""


class ModelNotLoaded(ServingFailure, code="model_not_loaded"):
    """No version of the model is loaded (yet): try again later."""


class VersionNotLoaded(ServingFailure, code="unknown_version"):
    """The request names a version that is not the one loaded."""


class ExplainNotAllowed(ServingFailure, code="explain_not_allowed"):
    """Exact reasons asked of a version whose gate measured them over the model's latency budget."""


class TooMany(ServingFailure):
    """More rows (records, jobs) in one request than a limit allows; the message names the setting."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotFound(ServingFailure):
    """What the request asks for does not exist (an entity's prediction, a job)."""

    def __init__(self, code: str, message: str, *, column: str | None = None) -> None:
        super().__init__(message, column=column)
        self.code = code


class UnknownModel(NotFound):
    """The request names a model this deployment does not serve."""

    def __init__(self, asked: str, served: str) -> None:
        super().__init__("unknown_model", f"unknown model '{asked}': this deployment serves '{served}'")


class Refused(ServingFailure):
    """A valid request the current state refuses: a reused idempotency key, a job that is no longer cancellable,
    a malformed job id."""

    def __init__(self, code: str, message: str, *, row: int | None = None) -> None:
        super().__init__(message, row=row)
        self.code = code


class StoreUnavailable(ServingFailure, RuntimeError, code="database_unavailable"):
    """The serving database cannot be reached (pool timeout or a broken connection)."""


class QueueUnavailable(ServingFailure, code="unavailable"):
    """The job queue's database cannot be reached."""
