"""The online app factory: `gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'`.

One deployment per model (SERVING_MODEL). Each gunicorn worker builds its own app (no preload), so each worker
loads the model and runs its own hot-reload poller.
"""

from __future__ import annotations

import atexit
import logging

from flask import Flask

from scoring.spec import load_spec
from serving import jobs
from serving.blueprints import health
from serving.config import Settings
from serving.errors import register_error_handlers
from serving.model_holder import ModelHolder
from serving.state import EXTENSION_KEY, ServingState

log = logging.getLogger(__name__)


def create_app(model: str | None = None, *, settings: Settings | None = None, start_holder: bool = True) -> Flask:
    settings = settings or Settings.from_env(model)
    spec = load_spec(settings.model)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # keep response keys in the documented order

    holder = ModelHolder(spec, ref=settings.model_ref, poll_interval_s=settings.poll_interval_s,
                         threads=settings.booster_threads)
    app.extensions[EXTENSION_KEY] = ServingState(spec=spec, settings=settings, holder=holder)

    register_error_handlers(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)  # async jobs (serving/jobs.py)

    if start_holder:
        holder.start()
        atexit.register(holder.stop)
    return app
