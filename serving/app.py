"""The online app factory: `gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'`.

One deployment per model (SERVING_MODEL). Each gunicorn worker builds its own app (no preload), so each worker
loads the model and runs its own hot-reload poller.
"""

from __future__ import annotations

import atexit
import logging

from flask import Flask

from scoring.db import database_url
from scoring.spec import load_spec
from serving import jobs
from serving.blueprints import health, meta, mlflow_protocol, oip, v1
from serving.config import Settings
from serving.errors import register_error_handlers
from serving.lookup import PredictionStore
from serving.metrics import MODEL_VERSION, REFUSED, RELOADS, version_number
from serving.middleware import register_middleware
from serving.model_holder import ModelHolder
from serving.state import EXTENSION_KEY, ServingState

log = logging.getLogger(__name__)


def create_app(model: str | None = None, *, settings: Settings | None = None, start_holder: bool = True) -> Flask:
    settings = settings or Settings.from_env(model)
    spec = load_spec(settings.model)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # keep response keys in the documented order

    def on_swap(old, new) -> None:
        MODEL_VERSION.labels(spec.name).set(version_number(new.version))
        if old is not None:
            RELOADS.labels(spec.name).inc()

    holder = ModelHolder(spec, ref=settings.model_ref, poll_interval_s=settings.poll_interval_s,
                         threads=settings.booster_threads, on_swap=on_swap,
                         on_refuse=lambda version, reason: REFUSED.labels(spec.name).inc())
    MODEL_VERSION.labels(spec.name).set(0)
    store = PredictionStore(spec, settings.database_url or database_url(), min_size=settings.db_pool_min,
                            max_size=settings.db_pool_max, timeout_s=settings.db_timeout_s,
                            latest_ttl_s=settings.latest_ttl_s)
    app.extensions[EXTENSION_KEY] = ServingState(spec=spec, settings=settings, holder=holder, store=store)
    # The MLflow protocol parses against the logged signature's inputs (the encoded frame).
    app.config["MLFLOW_INPUT_SCHEMA"] = mlflow_protocol.input_schema(spec)

    register_error_handlers(app)
    register_middleware(app, spec.name)
    app.register_blueprint(health.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(mlflow_protocol.bp)
    app.register_blueprint(oip.bp)
    app.register_blueprint(meta.bp)
    app.register_blueprint(jobs.bp)  # async jobs (serving/jobs.py)

    if start_holder:
        store.open()
        holder.start()
        atexit.register(holder.stop)
        atexit.register(store.close)
    return app
