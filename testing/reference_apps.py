"""Reference apps for the online benchmark (bench/online.py), run under the same gunicorn settings as the platform
(`gunicorn ... 'testing.reference_apps:hello()'`; not shipped).

  hello()        bare Flask "hello": the ceiling of any Flask app here.
  floor_flask()  the shared scorer behind the thinnest Flask route (JSON records in, scores out; no limits, auth,
                 metrics, request ids or protocol checks): the most a Flask live predict can do here.
  floor_wsgi()   the same without Flask (a plain WSGI callable): the most any live predict under gunicorn can do.

The floors say how much of the gap to a target is the platform's own work and how much is the web stack's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import xgboost as xgb
from flask import Flask, Response, request

from scoring.scorer import Scorer
from scoring.spec import load_spec


def hello() -> Flask:
    app = Flask(__name__)

    @app.get("/hello")
    def hello_world() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _score_body(scorer: Scorer, raw: bytes) -> bytes:
    predictions = scorer.score(json.loads(raw)["records"]).records()
    return json.dumps({"model_version": scorer.version, "predictions": predictions}).encode()


def _champion() -> Scorer:
    """The version the bench saved to REFERENCE_MODEL_FILE: no registry at boot, so a worker that (re)starts
    after the bench stopped MLflow still boots."""
    booster = xgb.Booster(model_file=os.environ["REFERENCE_MODEL_FILE"])
    return Scorer.from_booster(load_spec(os.environ["SERVING_MODEL"]), booster, "reference", threads=1)


def floor_flask() -> Flask:
    scorer = _champion()
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Response:
        return Response(_score_body(scorer, request.get_data()), mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def floor_wsgi() -> Callable[[dict[str, Any], Callable], Iterable[bytes]]:
    scorer = _champion()

    def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/predict":
            body = _score_body(scorer, environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        else:
            body = b'{"status": "ok"}'
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app
