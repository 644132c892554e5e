"""gunicorn settings for one model deployment, from the environment with defaults for 2 cores.

    SERVING_MODEL=churn gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'

Every SERVING_* read here is declared (type, default, doc) in scoring/settings.py; a bad value stops gunicorn
before it binds, with a message naming the variable and the value.
"""

from __future__ import annotations

import os

from scoring.settings import SettingsError
from serving.config import GunicornSettings

try:
    _s = GunicornSettings.from_env()
except SettingsError as exc:  # SystemExit passes gunicorn's config loader: one line instead of a traceback
    raise SystemExit(f"error: {exc}") from None

bind = _s.bind
workers = _s.workers
# Sync workers (threads=1) measured best on 2 cores with wrk at 32 connections (bench/online.py, same run:
# live 2223 vs 2108 req/s, lookup 2796 vs 2410 req/s, lower p99 than gthread with 4 threads): one request
# per process at a time means no GIL hand-offs. SERVING_THREADS>1 switches to gthread (keep-alive, and a slow
# database call then blocks one thread instead of the whole worker).
threads = _s.threads
worker_class = _s.effective_worker_class
timeout = _s.timeout_s  # also bounds a worker's boot (model load)
graceful_timeout = _s.graceful_timeout_s
keepalive = _s.keepalive_s
backlog = _s.backlog
# Request-line / header limits (the body limit is the app's MAX_CONTENT_LENGTH, SERVING_MAX_BODY_BYTES).
limit_request_line = _s.limit_request_line
limit_request_fields = _s.limit_request_fields
limit_request_field_size = _s.limit_request_field_size
max_requests = _s.max_requests
preload_app = False  # every worker loads its own model and runs its own reload poller

loglevel = _s.log_level
errorlog = "-"
accesslog = _s.access_log or None
proc_name = f"serving-{_s.model or 'model'}"

# A serving process must not stall for minutes when MLflow is down (MLflow's client retries 7 times with
# exponential backoff by default): fail a registry poll fast and keep serving the loaded version.
os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(_s.mlflow_max_retries)
os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(_s.mlflow_backoff_factor)
os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(_s.mlflow_timeout_s)
logger_class = "serving.access_log.JsonAccessLogger"

# Prometheus multiprocess mode: every worker writes its samples under this directory; /metrics merges them.
# It must be in the environment before a worker imports prometheus_client, hence here in the master.
_default_metrics_dir = os.path.join(
    "/tmp", f"serving-metrics-{_s.model or 'model'}-{bind.replace(':', '-').replace('/', '_')}")
_metrics_dir = str(_s.metrics_dir) if _s.metrics_dir else _default_metrics_dir
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def on_starting(server) -> None:  # noqa: ANN001 - gunicorn hook
    import shutil

    shutil.rmtree(_metrics_dir, ignore_errors=True)  # stale files from a previous run would add up forever
    os.makedirs(_metrics_dir, exist_ok=True)


def post_worker_init(worker) -> None:  # noqa: ANN001 - gunicorn hook
    # Open Inference over gRPC beside the worker's HTTP loop, on the worker's own app (serving/grpc/server.py).
    if _s.grpc_port:
        from serving.grpc.server import grpc_address, start_for_app

        worker.grpc_server = start_for_app(worker.wsgi, grpc_address(bind, _s.grpc_port), _s.grpc_threads)


def worker_exit(server, worker) -> None:  # noqa: ANN001 - gunicorn hook
    grpc_server = getattr(worker, "grpc_server", None)
    if grpc_server is not None:
        grpc_server.stop(grace=min(5, _s.graceful_timeout_s)).wait()  # calls in flight finish (bounded)


def child_exit(server, worker) -> None:  # noqa: ANN001 - gunicorn hook
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:  # noqa: ANN001 - gunicorn hook
    import shutil

    if _metrics_dir == _default_metrics_dir:  # ours to remove, not a caller's
        shutil.rmtree(_default_metrics_dir, ignore_errors=True)
