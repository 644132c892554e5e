"""gunicorn settings for one model deployment, from the environment with defaults for 2 cores.

    SERVING_MODEL=churn gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'
"""

from __future__ import annotations

import os

bind = os.environ.get("SERVING_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SERVING_WORKERS", "2"))
# Sync workers (threads=1) measured best on 2 cores with wrk at 32 connections (bench/online.py, same run:
# live 2223 vs 2108 req/s, lookup 2796 vs 2410 req/s, lower p99 than gthread with 4 threads): one request
# per process at a time means no GIL hand-offs. SERVING_THREADS>1 switches to gthread (keep-alive, and a slow
# database call then blocks one thread instead of the whole worker).
threads = int(os.environ.get("SERVING_THREADS", "1"))
worker_class = os.environ.get("SERVING_WORKER_CLASS", "gthread" if threads > 1 else "sync")
timeout = int(os.environ.get("SERVING_TIMEOUT_S", "60"))  # also bounds a worker's boot (model load)
graceful_timeout = int(os.environ.get("SERVING_GRACEFUL_TIMEOUT_S", "20"))
keepalive = int(os.environ.get("SERVING_KEEPALIVE_S", "5"))
backlog = int(os.environ.get("SERVING_BACKLOG", "2048"))
# Request-line / header limits (the body limit is the app's MAX_CONTENT_LENGTH, SERVING_MAX_BODY_BYTES).
limit_request_line = int(os.environ.get("SERVING_LIMIT_REQUEST_LINE", "4094"))
limit_request_fields = int(os.environ.get("SERVING_LIMIT_REQUEST_FIELDS", "100"))
limit_request_field_size = int(os.environ.get("SERVING_LIMIT_REQUEST_FIELD_SIZE", "8190"))
max_requests = int(os.environ.get("SERVING_MAX_REQUESTS", "0"))
preload_app = False  # every worker loads its own model and runs its own reload poller

loglevel = os.environ.get("SERVING_LOG_LEVEL", "info")
errorlog = "-"
accesslog = os.environ.get("SERVING_ACCESS_LOG", "-") or None
proc_name = f"serving-{os.environ.get('SERVING_MODEL', 'model')}"

# A serving process must not stall for minutes when MLflow is down (MLflow's client retries 7 times with
# exponential backoff by default): fail a registry poll fast and keep serving the loaded version.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
logger_class = "serving.access_log.JsonAccessLogger"

# Prometheus multiprocess mode: every worker writes its samples under this directory; /metrics merges them.
# It must be in the environment before a worker imports prometheus_client, hence here in the master.
_default_metrics_dir = os.path.join(
    "/tmp", f"serving-metrics-{os.environ.get('SERVING_MODEL', 'model')}-{bind.replace(':', '-').replace('/', '_')}")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _default_metrics_dir)


def on_starting(server) -> None:  # noqa: ANN001 - gunicorn hook
    import shutil

    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)  # stale files from a previous run would add up forever
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker) -> None:  # noqa: ANN001 - gunicorn hook
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:  # noqa: ANN001 - gunicorn hook
    import shutil

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == _default_metrics_dir:  # ours to remove, not a caller's
        shutil.rmtree(_default_metrics_dir, ignore_errors=True)
