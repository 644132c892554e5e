"""The services one deployment's app hands to its protocols, and how a view finds them.

Prediction (serving/predict.py), lookups (serving/lookups.py) and job intake (serving/job_intake.py) have no HTTP
in them; this module is the only Flask binding: `plane()` is the current app's services, `request_id()` the id
the middleware gave the request. Each protocol maps the services' failures to its error shape in one place (its
Protocol declaration, serving/routes.py). (The model named in the URL is checked from the route declarations;
the body limit is the app's MAX_CONTENT_LENGTH, set from the same settings.)
"""

from __future__ import annotations

from typing import Any, Protocol

from flask import current_app, request

from scoring.spec import ModelSpec
from serving.config import Settings
from serving.job_intake import JobIntake, JobSink
from serving.lookups import Lookups, LookupSource
from serving.middleware import REQUEST_ID_KEY
from serving.model_holder import ModelHolder
from serving.payload_log import PayloadLog
from serving.predict import Predictor

EXTENSION_KEY = "serving"
FALLBACKS = ("live", "precomputed")


class Store(LookupSource, JobSink, Protocol):
    """The serving database as the services need it (serving/database.py; an in-memory fake in route tests)."""

    def ping(self) -> bool: ...


class DataPlane:
    def __init__(self, spec: ModelSpec, settings: Settings, holder: ModelHolder, store: Store,
                 payloads: PayloadLog | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.holder = holder
        self.store = store
        self.entity_key = spec.source.entity_key
        self.predictor = build_predictor(spec, settings, holder, payloads)
        self.lookups = Lookups(self.predictor, store)
        self.jobs = JobIntake(self.predictor, store, max_records=settings.job_max_records,
                              bulk_max_jobs=settings.job_bulk_max_jobs, ttl_s=settings.job_ttl_s)

    def db_ok(self) -> bool:
        return self.store.ping()


def build_predictor(spec: ModelSpec, settings: Settings, holder: ModelHolder,
                    payloads: PayloadLog | None = None) -> Predictor:
    """The prediction function of a serving process (the Flask app's and the gRPC server's): live rows, the
    row limit of SERVING_MAX_ROWS."""
    return Predictor(spec, holder, max_rows=settings.max_rows, payloads=payloads)


def plane() -> DataPlane:
    """The services of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]


def request_id() -> Any:
    return request.environ.get(REQUEST_ID_KEY)
