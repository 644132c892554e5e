"""The online app factory: `gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'`.

One deployment per model (SERVING_MODEL). Each gunicorn worker builds its own app (no preload), so each worker
loads the model, runs its own hot-reload poller and opens its own database pool (one, for lookups and jobs).

`create_app()` with no arguments is that default wiring, from the environment. Tests and other embedders pass
their own settings and dependencies: `create_app(settings, holder=..., store=..., payloads=...)`; what is passed
in is used as it is (its owner starts and stops it), what is not is built and started here. The payload log
writes to the store's database, so it is built here only along with the store (SERVING_PAYLOAD_SAMPLE_RATE > 0).
"""

from __future__ import annotations

import atexit
import json
import logging

from flask import Flask

from scoring.db import database_url
from scoring.spec import ModelSpec, load_spec
from serving.auth import EXTENSION_KEY as AUTH_KEY
from serving.auth import Authorizer
from serving.config import Settings
from serving.database import ServingDatabase
from serving.dataplane import EXTENSION_KEY, DataPlane, Store
from serving.errors import register_error_handlers
from serving.metrics import MODEL_VERSION, REFUSED, RELOADS, version_number
from serving.middleware import register_middleware
from serving.model_holder import ModelHolder
from serving.openapi import document
from serving.payload_log import PayloadLog
from serving.protocols import PROTOCOLS
from serving.protocols.ops import OPENAPI_KEY
from serving.routes import Protocol, install

log = logging.getLogger(__name__)


def default_holder(settings: Settings, spec: ModelSpec) -> ModelHolder:
    """The registry-polling holder, wired to the version/reload/refusal metrics (not started)."""

    def on_swap(old, new) -> None:
        MODEL_VERSION.labels(spec.name).set(version_number(new.version))
        if old is not None:
            RELOADS.labels(spec.name).inc()

    MODEL_VERSION.labels(spec.name).set(0)
    return ModelHolder(spec, ref=settings.model_ref, poll_interval_s=settings.poll_interval_s,
                       threads=settings.booster_threads, on_swap=on_swap, allow_ungated=settings.allow_ungated,
                       on_refuse=lambda version, reason: REFUSED.labels(spec.name).inc())


def default_store(settings: Settings, spec: ModelSpec) -> ServingDatabase:
    """The worker's one database pool (not opened)."""
    return ServingDatabase(spec, settings.database_url or database_url(), min_size=settings.db_pool_min,
                           max_size=settings.db_pool_max, timeout_s=settings.db_timeout_s,
                           latest_ttl_s=settings.latest_ttl_s)


def default_payloads(settings: Settings, spec: ModelSpec) -> PayloadLog | None:
    """The worker's payload log (not started); None when sampling is off."""
    if settings.payload_sample_rate <= 0:
        return None
    return PayloadLog(spec, settings.database_url or database_url(), rate=settings.payload_sample_rate,
                      capacity_rows=settings.payload_buffer_rows, flush_s=settings.payload_flush_s)


def create_app(settings: Settings | None = None, *, holder: ModelHolder | None = None, store: Store | None = None,
               payloads: PayloadLog | None = None, protocols: list[Protocol] | None = None) -> Flask:
    settings = settings or Settings.from_env()
    spec = load_spec(settings.model)
    if holder is not None and holder.spec.name != spec.name:
        raise ValueError(f"the holder serves model '{holder.spec.name}', the settings name '{spec.name}'")
    own_holder = default_holder(settings, spec) if holder is None else None
    own_store = default_store(settings, spec) if store is None else None
    own_payloads = default_payloads(settings, spec) if store is None and payloads is None else None
    holder = holder or own_holder
    store = store or own_store
    payloads = payloads or own_payloads
    protocols = PROTOCOLS if protocols is None else protocols

    app = Flask(__name__, static_folder=None)  # every route is declared: no implicit /static
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes  # the body limit, for every protocol
    app.json.sort_keys = False  # keep response keys in the documented order
    app.extensions[EXTENSION_KEY] = DataPlane(spec, settings, holder, store, payloads)
    register_error_handlers(app)  # unmatched routes (404, 405) in the platform's shape
    register_middleware(app, spec.name)
    # Raises UndeclaredRouteError for a URL rule without a declaration: before anything is started.
    authorizer = Authorizer.from_config(api_token=settings.api_token, tokens=settings.tokens,
                                        tokens_file=settings.tokens_file)  # a bad entry stops start-up
    if not authorizer.enabled:
        log.warning("serving %s: no token configured (SERVING_TOKENS, SERVING_TOKENS_FILE, SERVING_API_TOKEN): "
                    "every route is open; keep it on loopback", spec.name)
    app.extensions[AUTH_KEY] = authorizer
    install(app, protocols, authorizer=authorizer, model=spec.name)
    app.extensions[OPENAPI_KEY] = json.dumps(document(spec, protocols)).encode()

    if own_store is not None:
        own_store.open()
        atexit.register(own_store.close)
    if own_payloads is not None:
        own_payloads.start()
        atexit.register(own_payloads.close)
    if own_holder is not None:
        own_holder.start()
        atexit.register(own_holder.stop)
    return app
