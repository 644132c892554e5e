"""Every environment variable the platform reads or sets, declared once: name, type, default, doc, readers.

Each component builds a typed, frozen settings object from this registry (`load(SomeSettings, env)` over
dataclass fields made with `setting("NAME")`), so a variable's name, default and check live only here. A value
that does not parse stops start-up with a SettingsError naming the variable and the value.

The settings tables of docs/settings.md and `.env.example` are generated from the registry (a test fails when
they drift):

    python -m scoring.settings --write     # rewrite both
    python -m scoring.settings --markdown  # print the settings tables
    python -m scoring.settings --env-example

Stdlib only: the gunicorn config, the stack and the benches import it before anything heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
README = REPO / "docs" / "settings.md"  # the settings tables (linked from README.md)
ENV_EXAMPLE = REPO / ".env.example"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"

# Who reads (or sets) a variable. "compose" = docker-compose.yaml (its `.env` or a service's environment).
COMPONENTS = ("core", "serving", "gunicorn", "worker", "batch", "airflow", "mlflow", "stack", "compose", "bench")
KINDS = ("str", "int", "float", "bool", "port", "path", "url", "bind", "choice", "list")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
STACK_COMPONENTS = ("postgres", "mlflow", "airflow", "serving", "worker", "gateway")


class SettingsError(ValueError):
    """An environment variable holds a value the platform cannot use; the message names the variable and value."""


@dataclass(frozen=True)
class Var:
    name: str
    kind: str
    default: str | None  # as written in the environment; None = unset (the reader decides, see default_doc)
    doc: str
    components: tuple[str, ...]
    group: str
    secret: bool = False
    low: float | None = None  # inclusive bounds for int/float
    high: float | None = None
    positive: bool = False  # float/int must be > 0
    choices: tuple[str, ...] = ()  # choice: one of; list: a comma list of these
    schemes: tuple[str, ...] = ()  # url: allowed schemes
    empty_is_unset: bool = True  # False when an empty value means something (e.g. "turn off")
    default_doc: str = ""  # how the reader computes the default when `default` is None
    example: str | None = None  # value shipped in .env.example (compose variables), when not the default
    third_party: str = ""  # the program that actually interprets it (MLflow, Airflow, ...), when not ours
    dotenv: bool = False  # docker-compose.yaml takes it from `.env`: shipped in .env.example

    def __post_init__(self) -> None:
        assert self.kind in KINDS, (self.name, self.kind)
        assert set(self.components) <= set(COMPONENTS), (self.name, self.components)
        assert self.kind not in ("choice", "list") or self.choices, self.name


def _v(name: str, kind: str, default: str | None, doc: str, components: Iterable[str], **kw: Any) -> Var:
    return Var(name, kind, default, doc, tuple(components), **kw)


def _dotenv(name: str, kind: str, default: str | None, doc: str, **kw: Any) -> Var:
    return Var(name, kind, default, doc, ("compose",), group=_COMPOSE, dotenv=True, **kw)


# ------------------------------------------------------------------------------------------------ the registry
# Order = the order of the README table and of .env.example.

_CORE = "Shared core"
_SERVING = "Online serving (the Flask app)"
_GUNICORN = "Online serving (gunicorn, `serving/gunicorn.conf.py`)"
_WORKER = "Async worker (`python -m serving.job_worker`)"
_BATCH = "Batch and Airflow"
_STACK = "Local stack (`make up`)"
_COMPOSE = "Container deployment (`.env` for `docker-compose.yaml`)"
_BENCH = "Benchmarks"

_VARS: tuple[Var, ...] = (
    # --- shared core
    _v("DATABASE_URL", "url", "postgresql://postgres@127.0.0.1:55432/serving",
       "The serving database (features, predictions, ops). Set by `make up` and docker-compose for every service; "
       "`make up` and the benches, when it is set, use the server it names (the `mlflow` and `airflow` databases "
       "beside it) instead of starting their own PostgreSQL.",
       ("core", "serving", "worker", "batch", "stack", "bench"), group=_CORE, schemes=("postgresql", "postgres")),
    _v("MODELS_FILE", "path", None, "The model spec file (one entry per served model).",
       ("core", "serving", "worker", "batch", "airflow", "stack"), group=_CORE,
       default_doc="`models.yaml` in the repository"),
    _v("MLFLOW_TRACKING_URI", "str", None,
       "MLflow tracking server and registry. Set by `make up` and docker-compose for every service.",
       ("core", "serving", "worker", "batch", "airflow", "bench"), group=_CORE, third_party="MLflow",
       default_doc="MLflow's own (`./mlruns`)"),
    _v("GIT_PYTHON_REFRESH", "str", None,
       "Silences GitPython's warning when no `git` is installed (MLflow imports it). Set to `quiet` by "
       "`make up`, the Dockerfile and the benches.", ("stack", "bench"), group=_CORE, third_party="GitPython",
       default_doc="unset"),
    # --- online serving: the app
    _v("SERVING_MODEL", "str", None,
       "The model (from models.yaml) this deployment serves; required by the app and the worker.",
       ("serving", "gunicorn", "worker"), group=_SERVING, default_doc="required"),
    _v("SERVING_MODEL_REF", "str", "champion", "Registry alias served (hot-reloaded when it moves).",
       ("serving", "worker"), group=_SERVING),
    _v("SERVING_POLL_INTERVAL_S", "float", "10", "Seconds between each process's checks of the alias.",
       ("serving", "worker"), group=_SERVING, positive=True),
    _v("SERVING_ALLOW_UNGATED", "bool", "false",
       "Serve (and let the async worker and the nightly batch use) registry versions the promotion gate did not "
       "promote (their `gate.decision` tag is not `promoted`), e.g. a hand-registered model. Off: such a version "
       "is refused at load like a broken one and the loaded version keeps serving; a predict run fails naming it.",
       ("serving", "worker", "airflow"), group=_SERVING),
    _v("SERVING_TOKENS", "str", None,
       "The clients allowed in: `name:sha256-of-token:scope[,scope]` entries separated by spaces (scopes "
       "`predict`, `jobs`, `metrics`, `*`; `python -m serving.auth new <name> <scopes>` makes one). Only hashes: "
       "the tokens themselves are never stored. Required by docker-compose; with no token configured at all "
       "(this, SERVING_TOKENS_FILE and SERVING_API_TOKEN unset) every route is open (the local stack).",
       ("serving", "compose"), group=_SERVING, secret=True, dotenv=True, default_doc="unset"),
    _v("SERVING_TOKENS_FILE", "path", None, "A file of SERVING_TOKENS entries (one or more per line, `#` "
       "comments), e.g. a mounted secret; used together with SERVING_TOKENS.", ("serving",), group=_SERVING,
       default_doc="unset"),
    _v("SERVING_API_TOKEN", "str", None,
       "A single bearer token granting every scope (one shared client, `anonymous`); kept for simple setups, prefer "
       "SERVING_TOKENS. Health and readiness stay open; metrics need the `metrics` scope once any token is set.",
       ("serving",), group=_SERVING, secret=True, default_doc="unset"),
    _v("SERVING_MAX_BODY_BYTES", "int", "1048576", "Largest request body (413 above).", ("serving",),
       group=_SERVING, low=1),
    _v("SERVING_MAX_ROWS", "int", "1000", "Most records in one synchronous request (413 above).", ("serving",),
       group=_SERVING, low=1),
    _v("SERVING_JOB_MAX_RECORDS", "int", "10000", "Most records in one async job submit (413 above).",
       ("serving",), group=_SERVING, low=1),
    _v("SERVING_JOB_BULK_MAX_JOBS", "int", "1000",
       "Most jobs in one bulk submit (`POST /v1/models/<m>/jobs/bulk`; 413 above); their records together are "
       "bounded by SERVING_JOB_MAX_RECORDS.", ("serving",), group=_SERVING, low=1),
    _v("SERVING_JOB_TTL_S", "float", "86400",
       "A queued async job not claimed within this many seconds ends `expired` with the reason (0 = never).",
       ("serving",), group=_SERVING, low=0),
    _v("SERVING_BOOSTER_THREADS", "int", "1",
       "Threads per XGBoost booster (gunicorn workers already use the cores).", ("serving", "worker"),
       group=_SERVING, low=1),
    _v("SERVING_DB_POOL_MIN", "int", "1", "Connections each worker keeps open to the serving database.",
       ("serving",), group=_SERVING, low=0),
    _v("SERVING_DB_POOL_MAX", "int", "4", "Most connections per worker to the serving database.", ("serving",),
       group=_SERVING, low=1),
    _v("SERVING_DB_TIMEOUT_S", "float", "2",
       "Pool wait and connect timeout: an unreachable database answers 503 this fast.", ("serving",),
       group=_SERVING, positive=True),
    _v("SERVING_LATEST_TTL_S", "float", "2", "Cache lifetime of the latest complete prediction date.",
       ("serving",), group=_SERVING, low=0),
    _v("SERVING_DB_STATEMENT_TIMEOUT_MS", "int", "2000",
       "statement_timeout of serving connections: a query stuck behind a lock or a slow database answers 503 "
       "instead of hanging.", ("serving",), group=_SERVING, positive=True),
    _v("SERVING_DB_LOCK_TIMEOUT_MS", "int", "500",
       "lock_timeout of serving connections (a lookup queued behind a table lock answers 503 after this).",
       ("serving",), group=_SERVING, positive=True),
    _v("SERVING_PAYLOAD_SAMPLE_RATE", "float", "0.1",
       "Share of live requests whose rows and predictions are logged to `ops.online_payloads` for the monitor "
       "(0 = off, 1 = every request). Written in the background; never slows or fails a request.", ("serving",),
       group=_SERVING, low=0, high=1),
    _v("SERVING_PAYLOAD_BUFFER_ROWS", "int", "20000",
       "Rows each worker holds for the payload writer; past it, sampled rows are dropped and counted "
       "(`serving_payload_rows_total{outcome=\"dropped_buffer_full\"}`), never waited for.", ("serving",),
       group=_SERVING, low=1),
    _v("SERVING_PAYLOAD_FLUSH_S", "float", "1",
       "How often the payload writer writes what it holds (one COPY per flush, sooner when a quarter of the "
       "buffer is full).", ("serving",), group=_SERVING, positive=True),
    _v("PROMETHEUS_MULTIPROC_DIR", "path", None,
       "Where every gunicorn worker writes its metric samples (`/metrics` merges them); emptied at start.",
       ("serving", "gunicorn"), group=_SERVING, third_party="prometheus_client",
       default_doc="`/tmp/serving-metrics-<model>-<bind>`, set by gunicorn.conf.py"),
    # --- online serving: gunicorn
    _v("SERVING_BIND", "bind", "127.0.0.1:8000", "Address gunicorn listens on (`host:port` or `unix:/path`).",
       ("gunicorn",), group=_GUNICORN),
    _v("SERVING_WORKERS", "int", "2", "gunicorn worker processes (each loads the model).", ("gunicorn",),
       group=_GUNICORN, low=1),
    _v("SERVING_THREADS", "int", "1", "Threads per worker; 1 = sync workers (measured best on 2 cores).",
       ("gunicorn",), group=_GUNICORN, low=1),
    _v("SERVING_GRPC_PORT", "int", "0",
       "Open Inference over gRPC (KServe v2 `GRPCInferenceService`) on this port, served by every worker "
       "(SO_REUSEPORT) on the host of SERVING_BIND (loopback for a unix socket); 0 = no gRPC.", ("gunicorn",),
       group=_GUNICORN, low=0, high=65535),
    _v("SERVING_GRPC_THREADS", "int", "4", "Threads of each worker's gRPC server.", ("gunicorn",),
       group=_GUNICORN, low=1),
    _v("SERVING_WORKER_CLASS", "str", None, "gunicorn worker class.", ("gunicorn",), group=_GUNICORN,
       default_doc="`gthread` when SERVING_THREADS > 1, else `sync`"),
    _v("SERVING_TIMEOUT_S", "int", "60", "Worker timeout; also bounds a worker's boot (model load).",
       ("gunicorn",), group=_GUNICORN, low=0),
    _v("SERVING_GRACEFUL_TIMEOUT_S", "int", "20", "Seconds a stopping worker gets to finish its requests.",
       ("gunicorn",), group=_GUNICORN, low=0),
    _v("SERVING_KEEPALIVE_S", "int", "5", "Keep-alive seconds (gthread workers).", ("gunicorn",),
       group=_GUNICORN, low=0),
    _v("SERVING_BACKLOG", "int", "2048", "Pending connections the listen socket holds.", ("gunicorn",),
       group=_GUNICORN, low=1),
    _v("SERVING_LIMIT_REQUEST_LINE", "int", "4094", "Longest request line in bytes (0 = unlimited).",
       ("gunicorn",), group=_GUNICORN, low=0, high=8190),
    _v("SERVING_LIMIT_REQUEST_FIELDS", "int", "100", "Most request headers.", ("gunicorn",), group=_GUNICORN,
       low=0, high=32768),
    _v("SERVING_LIMIT_REQUEST_FIELD_SIZE", "int", "8190", "Largest request header in bytes (0 = unlimited).",
       ("gunicorn",), group=_GUNICORN, low=0),
    _v("SERVING_MAX_REQUESTS", "int", "0", "Restart a worker after this many requests (0 = never).",
       ("gunicorn",), group=_GUNICORN, low=0),
    _v("SERVING_LOG_LEVEL", "choice", "info", "gunicorn's error-log level.", ("gunicorn",), group=_GUNICORN,
       choices=LOG_LEVELS),
    _v("SERVING_ACCESS_LOG", "str", "-",
       "JSON-lines access log (with `request_id`, echoed as `X-Request-ID`): `-` = stdout, a file path, "
       "or empty = off.", ("gunicorn",), group=_GUNICORN, empty_is_unset=False),
    _v("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "int", "2",
       "Retries of a registry call; set by gunicorn.conf.py when unset so a poll fails fast while MLflow is down "
       "(MLflow's own default is 7).", ("gunicorn",), group=_GUNICORN, low=0, third_party="MLflow"),
    _v("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "int", "1", "Backoff between those retries (set like the above).",
       ("gunicorn",), group=_GUNICORN, low=0, third_party="MLflow"),
    _v("MLFLOW_HTTP_REQUEST_TIMEOUT", "int", "10", "Seconds per registry call (set like the above).",
       ("gunicorn",), group=_GUNICORN, low=1, third_party="MLflow"),
    # --- async worker
    _v("WORKER_BATCH_SIZE", "int", "256", "Most jobs claimed and scored in one micro-batch.", ("worker",),
       group=_WORKER, low=1),
    _v("WORKER_MAX_BATCH_RECORDS", "int", "50000", "Most records per scorer call (jobs carry many records).",
       ("worker",), group=_WORKER, low=1),
    _v("WORKER_LEASE_S", "float", "30",
       "Claim lease, renewed while a claim is being scored; a dead worker's jobs return to the queue after it.",
       ("worker",), group=_WORKER, positive=True),
    _v("WORKER_MAX_CLAIM_BYTES", "int", "33554432",
       "A claim stops adding jobs once their payloads reach this many bytes (always at least one job).",
       ("worker",), group=_WORKER, low=1),
    _v("WORKER_IDLE_POLL_S", "float", "2", "Polling fallback when no NOTIFY wakes an idle worker.", ("worker",),
       group=_WORKER, positive=True),
    _v("WORKER_LINGER_MS", "float", "10",
       "After a claim smaller than WORKER_BATCH_SIZE (or a wake-up by a submit), wait this long before claiming "
       "again, so that a trickle of one-job submits is claimed and written in batches (adds at most this to a "
       "job's latency; 0 = claim at once).", ("worker",), group=_WORKER, low=0),
    _v("WORKER_RETRY_BACKOFF_S", "float", "1", "Backoff before a failed job is retried.", ("worker",),
       group=_WORKER, low=0),
    _v("WORKER_LOG_LEVEL", "choice", "info", "The worker's log level.", ("worker",), group=_WORKER,
       choices=LOG_LEVELS),
    _v("WORKER_SHADOW_INTERVAL_S", "float", "5",
       "Online shadow: how often the async worker scores the live rows logged since its last pass "
       "(`ops.online_payloads`, SERVING_PAYLOAD_SAMPLE_RATE's sample) with the `challenger` and writes its "
       "answers beside the champion's (route `shadow`); 0 = off. Never on a client's path.", ("worker",),
       group=_WORKER, low=0),
    _v("WORKER_SHADOW_MAX_ROWS", "int", "20000", "Most logged rows the online shadow scores in one pass.",
       ("worker",), group=_WORKER, low=1),
    # --- batch and Airflow
    _v("SCORING_COPY_READER", "choice", "psql",
       "How batch scoring streams features out of PostgreSQL: `psql` (the client's COPY, fast; psycopg when no "
       "psql is found) or `psycopg`.", ("batch",), group=_BATCH, choices=("psql", "psycopg")),
    _v("PSQL_BIN", "path", None, "The psql client used for COPY out.", ("batch",), group=_BATCH,
       default_doc="`psql` on PATH"),
    _v("BATCH_SWAP_LOCK_TIMEOUT_MS", "int", "100",
       "How long each attempt of a batch swap or partition drop waits for its table locks; lookups queued "
       "behind the attempt wait at most as long. It then backs off and retries.", ("batch",), group=_BATCH,
       positive=True),
    _v("BATCH_SWAP_DEADLINE_S", "float", "900",
       "How long a batch swap (or retention) keeps retrying for its locks, e.g. behind an analyst's long "
       "query, before the run fails with the reason; the old day stays.", ("batch",), group=_BATCH,
       positive=True),
    _v("QUEUE_RETENTION_HOURS", "int", "168",
       "Default `retention_hours` of the `queue_maintenance` DAG (finished jobs older than this are deleted).",
       ("airflow",), group=_BATCH, low=0),
    _v("PAYLOAD_RETENTION_DAYS", "int", "30",
       "Days of `ops.online_payloads` kept; the `queue_maintenance` DAG drops older day partitions.", ("airflow",),
       group=_BATCH, low=1),
    _v("AIRFLOW_CONN_SERVING_DB", "url", None,
       "Airflow connection `serving_db` (the serving database) used by the task bodies.", ("airflow",),
       group=_BATCH, third_party="Airflow", default_doc="DATABASE_URL (set by `make up` and docker-compose)"),
    _v("AIRFLOW_HOME", "path", None, "Airflow's home (config, logs).", ("airflow", "stack"), group=_BATCH,
       third_party="Airflow", default_doc="`$STACK_HOME/airflow` (set by `make up`)"),
    *(_v(name, "str", None, doc, ("airflow", "stack", "compose") if compose else ("airflow", "stack"),
         group=_BATCH, third_party="Airflow", secret=secret,
         default_doc="set by `make up`" + (" and docker-compose" if compose else ""))
      for name, doc, compose, secret in (
          ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "Airflow's metadata database (`airflow` beside `serving`).",
           True, False),
          ("AIRFLOW__CORE__EXECUTOR", "`LocalExecutor`.", True, False),
          ("AIRFLOW__CORE__PARALLELISM", "Task slots of the local stack (8).", False, False),
          ("AIRFLOW__CORE__DAGS_FOLDER", "`dags/`.", True, False),
          ("AIRFLOW__CORE__PLUGINS_FOLDER", "`plugins/` (the task bodies).", True, False),
          ("AIRFLOW__CORE__LOAD_EXAMPLES", "Off.", True, False),
          ("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "Off: the DAGs run on their schedules at once.", True, False),
          ("AIRFLOW__CORE__FERNET_KEY", "Encrypts connections and variables in the metadata database.", True, True),
          ("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "Where task processes reach the api-server.", True, False),
          ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "The admin login (`<user>:admin` role).", True, False),
          ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "Its password file.", True, False),
          ("AIRFLOW__CORE__UNIT_TEST_MODE", "Off.", False, False),
          ("AIRFLOW__API_AUTH__JWT_SECRET", "Signs task and API tokens (shared by every Airflow component).",
           True, True),
          ("AIRFLOW__API__SECRET_KEY", "The api-server's session key.", True, True),
          ("AIRFLOW__API__BASE_URL", "The api-server's own URL.", False, False),
          ("AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "The scheduler's health endpoint (container healthcheck).",
           True, False),
          ("AIRFLOW__CORE__HOSTNAME_CALLABLE", "STACK_EXECUTOR=celery: how a Celery worker names itself.", False,
           False),
          ("AIRFLOW__CELERY__BROKER_URL", "STACK_EXECUTOR=celery: the Redis broker.", False, False),
          ("AIRFLOW__CELERY__RESULT_BACKEND", "STACK_EXECUTOR=celery: task states, in Airflow's database.", False,
           False),
          ("AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER", "STACK_EXECUTOR=celery: 1.", False, False),
          ("AIRFLOW__CELERY__WORKER_CONCURRENCY", "STACK_EXECUTOR=celery: tasks per Celery worker (1).", False,
           False),
      )),
    # --- local stack
    _v("STACK_HOME", "path", None, "State folder: pgdata, logs, PID files, Airflow home, MLflow artifacts.",
       ("stack",), group=_STACK, default_doc="`.local/` in the repository"),
    _v("STACK_PG_PORT", "port", "55432", "The project-local PostgreSQL (the default DATABASE_URL's port).",
       ("stack",), group=_STACK),
    _v("STACK_MLFLOW_PORT", "port", None, "MLflow tracking server.", ("stack",), group=_STACK,
       default_doc="`MLFLOW_PORT` in `mlflow/server.env` (5000)"),
    _v("STACK_AIRFLOW_PORT", "port", "8080", "Airflow api-server.", ("stack",), group=_STACK),
    _v("STACK_SERVING_PORT", "port", "8000", "The gateway (nginx): the one entry point for every model.",
       ("stack",), group=_STACK),
    _v("STACK_REPLICA_PORT", "port", None,
       "First serving replica (loopback only); one port per model and replica, in models.yaml order.",
       ("stack",), group=_STACK, default_doc="STACK_SERVING_PORT + 100"),
    _v("STACK_REPLICA_GRPC_PORT", "port", None,
       "First serving replica's gRPC port (Open Inference over gRPC, loopback only); one port per model and "
       "replica, in models.yaml order (each replica's SERVING_GRPC_PORT).", ("stack",), group=_STACK,
       default_doc="STACK_SERVING_PORT + 200"),
    _v("STACK_SERVING_REPLICAS", "int", "2", "gunicorn replicas per model behind the gateway.", ("stack",),
       group=_STACK, low=1, high=32),
    _v("STACK_JOB_REPLICAS", "int", "1",
       "Threaded gunicorn replicas per model for the job routes (`/v1/models/<m>/jobs*`, `/v1/jobs/*`); 0: the "
       "job routes go to the sync replicas.", ("stack",), group=_STACK, low=0, high=32),
    _v("STACK_CANARY_REPLICAS", "int", "0",
       "gunicorn replicas per model serving the registry alias `canary` (SERVING_MODEL_REF=canary), idle until a "
       "canary is started (`python -m stack.rollout start <model> <version>`); with any, `make up` also runs the "
       "rollout watcher. 0: no canary can take traffic.", ("stack",), group=_STACK, low=0, high=8),
    _v("STACK_ROLLOUT_CHECK_S", "float", "30",
       "How often the rollout watcher (`python -m stack.rollout watch`) applies the registry's canary shares to "
       "the gateway and compares each running canary with its champion (rolling it back past models.yaml "
       "`rollout:` limits).", ("stack",), group=_STACK, positive=True),
    _v("STACK_JOB_THREADS", "int", "8", "gthread threads per job replica (SERVING_THREADS there).", ("stack",),
       group=_STACK, low=2, high=256),
    _v("STACK_GATEWAY_UNIX", "bool", "true",
       "The gateway reaches the replicas over Unix sockets (each also listens on its TCP port); false: TCP.",
       ("stack",), group=_STACK),
    _v("STACK_GRPC_PORT", "port", "8001", "The gateway's gRPC listener (HTTP/2): every model, routed by the "
       "`model` request metadata.", ("stack",), group=_STACK),
    _v("STACK_EXECUTOR", "choice", "local",
       "Airflow's executor: `local` (LocalExecutor) or `celery` (Redis and two Celery workers).", ("stack",),
       group=_STACK, choices=("local", "celery")),
    _v("STACK_REDIS_PORT", "port", "56379", "The Celery broker's redis-server (STACK_EXECUTOR=celery).",
       ("stack",), group=_STACK),
    _v("STACK_CELERY_HOSTNAME", "str", None, "Set by `make up` for each Celery worker: its Celery node name.",
       ("stack", "airflow"), group=_STACK, default_doc="the host's name"),
    _v("STACK_COMPONENTS", "list", ",".join(STACK_COMPONENTS), "Which services `make up` runs (comma list).",
       ("stack",), group=_STACK, choices=STACK_COMPONENTS),
    _v("STACK_ADMIN_PASSWORD", "str", "admin", "The local Airflow login's password (user `admin`).",
       ("stack",), group=_STACK, secret=True),
    _v("PG_BINDIR", "path", None, "Where `initdb` and `pg_ctl` live (local stack, tests, benches).",
       ("stack", "bench"), group=_STACK, default_doc="`pg_config --bindir`, else PATH"),
    # --- container deployment
    _dotenv("PLATFORM_IMAGE", "str", "model-serving-platform:latest", "Image built from `./Dockerfile`."),
    _dotenv("PYTHON_BASE_IMAGE", "str", "python:3.11-slim", "The platform image's base (a mirror or an in-house "
            "copy of the official image)."),
    _dotenv("POSTGRES_IMAGE", "str", "postgres:15", "The PostgreSQL image."),
    _dotenv("REDIS_IMAGE", "str", "redis:7.2-bookworm", "The Redis image (the Celery broker)."),
    _dotenv("PIP_INDEX_URL", "str", "https://pypi.org/simple", "Build argument: the index the image's pip "
            "installs requirements.txt from.", third_party="pip"),
    _dotenv("PIP_FIND_LINKS", "str", "", "Build argument: a wheelhouse URL (`pip wheel -r requirements.txt "
            "setuptools`); when set the image installs from it alone (air-gapped builds).", third_party="pip",
            default_doc="unset"),
    _dotenv("PIP_TRUSTED_HOST", "str", "", "Build argument: the host of a plain-HTTP index or wheelhouse.",
            third_party="pip", default_doc="unset"),
    _dotenv("GATEWAY_PORT", "port", "8000", "Host port of the gateway (every model)."),
    _dotenv("GATEWAY_GRPC_PORT", "port", "8001", "Host port of the gateway's gRPC listener (Open Inference over "
            "gRPC, every model: the request's `model` metadata names it)."),
    _dotenv("POSTGRES_USER", "str", None, "PostgreSQL role (one server: databases serving, mlflow, airflow).",
            example="platform", default_doc="required"),
    _dotenv("POSTGRES_PASSWORD", "str", None, "Its password (URL-safe characters).", secret=True,
            default_doc="required"),
    *(_dotenv(f"POSTGRES_{who.upper()}_PASSWORD", "str", None,
              f"Password of the PostgreSQL role `platform_{who}` ({what}); set by the init job (db-init), given "
              f"only to the services that log in with it.", secret=True, default_doc="required")
      for who, what in (("batch", "Airflow tasks: batch, training, monitoring"), ("serving", "the online app"),
                        ("worker", "the async workers"), ("airflow", "Airflow's metadata database"),
                        ("mlflow", "MLflow's backend store"),
                        ("features", "the feature pipeline: owns and writes the tables of schema features; "
                                     "the demo seeding job demo-seed"))),
    _dotenv("REDIS_PASSWORD", "str", None, "Password of the Celery broker (Redis), given only to Redis and "
            "Airflow's services.", secret=True, default_doc="required"),
    _dotenv("MLFLOW_ADMIN_PASSWORD", "str", None, "Password of MLflow's `admin` user (MLflow's basic-auth app; "
            "used by the mlflow-init job to create the other users).", secret=True, default_doc="required"),
    *(_dotenv(f"MLFLOW_{who.upper()}_PASSWORD", "str", None,
              f"Password of the MLflow user `{who}` ({what}); at least 12 characters.", secret=True,
              default_doc="required")
      for who, what in (("airflow", "trains, registers and promotes models"),
                        ("serving", "reads registered models only"), ("worker", "reads registered models only"))),
    _dotenv("MLFLOW_FLASK_SECRET_KEY", "str", None, "Becomes MLFLOW_FLASK_SERVER_SECRET_KEY (the MLflow auth app's "
            "CSRF key).", secret=True, default_doc="required"),
    _dotenv("AIRFLOW_ADMIN_USER", "str", "admin", "Airflow login."),
    _dotenv("AIRFLOW_ADMIN_PASSWORD", "str", None, "Its password.", secret=True, default_doc="required"),
    _dotenv("AIRFLOW_FERNET_KEY", "str", None, "Becomes AIRFLOW__CORE__FERNET_KEY.", secret=True,
            default_doc="required"),
    _dotenv("AIRFLOW_JWT_SECRET", "str", None, "Becomes AIRFLOW__API_AUTH__JWT_SECRET.", secret=True,
            default_doc="required"),
    _dotenv("AIRFLOW_API_SECRET_KEY", "str", None, "Becomes AIRFLOW__API__SECRET_KEY.", secret=True,
            default_doc="required"),
    _dotenv("AIRFLOW_PORT", "port", "8080", "Host port of the Airflow api-server."),
    _v("MLFLOW_TRACKING_USERNAME", "str", None, "The MLflow user of this client (MLflow's basic auth); "
       "docker-compose gives each component its own (`airflow`, `serving`, `worker`).",
       ("core", "serving", "worker", "batch", "airflow", "compose"), group=_COMPOSE, third_party="MLflow",
       default_doc="unset (no login: the local stack's MLflow is open on loopback)"),
    _v("MLFLOW_TRACKING_PASSWORD", "str", None, "Its password.",
       ("core", "serving", "worker", "batch", "airflow", "compose"), group=_COMPOSE, third_party="MLflow",
       secret=True, default_doc="unset"),
    _v("MLFLOW_BACKEND_STORE_URI", "str", None, "The MLflow server's backend store (set in docker-compose.yaml "
       "from the environment, so its password is on no command line).", ("mlflow", "compose"), group=_COMPOSE,
       third_party="MLflow", secret=True, default_doc="unset"),
    _v("REDISCLI_AUTH", "str", None, "The Celery broker's password inside the redis container (from "
       "REDIS_PASSWORD): written to redis-server's config at start, read by redis-cli (the healthcheck).",
       ("compose",), group=_COMPOSE, third_party="Redis", secret=True, default_doc="unset"),
    _v("MLFLOW_AUTH_CONFIG_PATH", "path", None, "The basic-auth app's config (`mlflow/basic_auth.ini`).",
       ("mlflow", "compose"), group=_COMPOSE, third_party="MLflow", default_doc="MLflow's own"),
    _v("MLFLOW_AUTH_ADMIN_PASSWORD", "str", None, "The MLflow admin's password at first start (from "
       "MLFLOW_ADMIN_PASSWORD).", ("mlflow", "compose"), group=_COMPOSE, third_party="MLflow", secret=True,
       default_doc="unset"),
    _v("MLFLOW_FLASK_SERVER_SECRET_KEY", "str", None, "The basic-auth app's CSRF key (from "
       "MLFLOW_FLASK_SECRET_KEY).", ("mlflow", "compose"), group=_COMPOSE, third_party="MLflow", secret=True,
       default_doc="unset"),
    _v("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "bool", None, "MLflow's job runner (huey consumers for GenAI "
       "online scoring and trace archival); docker-compose.yaml turns it off (~1 GB of idle memory, unused here).",
       ("mlflow", "compose"), group=_COMPOSE, third_party="MLflow", default_doc="MLflow's own (on)"),
    _v("MLFLOW_SERVER_ALLOWED_HOSTS", "str", None,
       "Host names the MLflow server answers (DNS-rebinding protection); set in docker-compose.yaml.",
       ("mlflow", "compose"), group=_COMPOSE, third_party="MLflow", default_doc="MLflow's own (localhost)"),
    # --- benchmarks
    _v("BENCH_DURATION", "int", "15", "`make bench-online`: seconds per wrk run (`--duration`).", ("bench",),
       group=_BENCH, low=1),
    _v("BENCH_ROUNDS", "int", "2", "`make bench-online`: rounds over the targets, best kept (`--rounds`).",
       ("bench",), group=_BENCH, low=1),
    _v("BENCH_JOBS", "int", "20000", "`make bench-async`: single-row jobs to drain (`--jobs`).", ("bench",),
       group=_BENCH, low=1),
    _v("BATCH_BENCH_ROWS", "int", "1000000", "`make bench-batch`: feature rows to score (a make variable).",
       ("bench",), group=_BENCH, low=1),
    _v("REFERENCE_MODEL_FILE", "path", None,
       "Set by bench-online: the booster file its reference apps load.", ("bench",), group=_BENCH,
       default_doc="set by the bench"),
)

REGISTRY: dict[str, Var] = {v.name: v for v in _VARS}
assert len(REGISTRY) == len(_VARS), "a variable is declared twice"


# ------------------------------------------------------------------------------------------------ parsing


def _fail(var: Var, raw: str, problem: str) -> SettingsError:
    shown = "***" if var.secret else repr(raw)
    return SettingsError(f"{var.name}={shown}: {problem}")


def _number(var: Var, raw: str, value: float, what: str) -> None:
    if var.positive and not value > 0:
        raise _fail(var, raw, f"must be {what} > 0")
    if var.low is not None and value < var.low:
        raise _fail(var, raw, f"must be {what} >= {var.low:g}" if var.high is None
                    else f"must be {what} in [{var.low:g}, {var.high:g}]")
    if var.high is not None and value > var.high:
        raise _fail(var, raw, f"must be {what} in [{var.low or 0:g}, {var.high:g}]")


def _port(var: Var, raw: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _fail(var, raw, "must be a TCP port number (1-65535)")
    return int(text)


def parse(var: Var, raw: str) -> Any:
    """The typed value of `raw` for `var`; SettingsError naming both when it does not fit."""
    text = raw.strip()
    kind = var.kind
    if kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise _fail(var, raw, "must be an integer") from None
        _number(var, raw, value, "an integer")
        return value
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise _fail(var, raw, "must be a number") from None
        if not math.isfinite(value):
            raise _fail(var, raw, "must be a finite number")
        _number(var, raw, value, "a number")
        return value
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise _fail(var, raw, "must be true or false")
    if kind == "port":
        return _port(var, raw, text)
    if kind == "path":
        return Path(text).expanduser()
    if kind == "url":
        scheme, sep, rest = text.partition("://")
        if not sep or not scheme or not rest:
            raise _fail(var, raw, "must be a URL (scheme://...)")
        if var.schemes and scheme.lower() not in var.schemes:
            raise _fail(var, raw, f"must be a {' or '.join(s + '://' for s in var.schemes)} URL")
        return text
    if kind == "bind":
        if text.startswith(("unix:", "fd://")):
            return text
        host, sep, port = text.rpartition(":")
        if not sep:
            raise _fail(var, raw, "must be host:port or unix:/path")
        _port(var, raw, port)
        return text
    if kind == "choice":
        for choice in var.choices:
            if text.lower() == choice.lower():
                return choice
        raise _fail(var, raw, f"must be one of {', '.join(var.choices)}")
    if kind == "list":
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = sorted(set(items) - set(var.choices))
        if unknown:
            raise _fail(var, raw, f"unknown {', '.join(unknown)}; choose from {', '.join(var.choices)}")
        return frozenset(items)
    return raw  # str: as written (leading/trailing spaces may matter in a token or a path)


def _var(var: Var | str) -> Var:
    if isinstance(var, Var):
        return var
    try:
        return REGISTRY[var]
    except KeyError:
        raise KeyError(f"{var} is not declared in scoring/settings.py") from None


def raw_value(var: Var | str, env: Mapping[str, str] | None = None) -> str | None:
    """What the environment holds for the variable; None when it is unset (or empty, for most variables)."""
    var = _var(var)
    raw = (os.environ if env is None else env).get(var.name)
    if raw is None or (raw == "" and var.empty_is_unset):
        return None
    return raw


def is_set(var: Var | str, env: Mapping[str, str] | None = None) -> bool:
    return raw_value(var, env) is not None


def default(var: Var | str) -> Any:
    """The typed default (None when the reader computes it)."""
    var = _var(var)
    return None if var.default is None else parse(var, var.default)


def read(var: Var | str, env: Mapping[str, str] | None = None) -> Any:
    """The typed value from `env` (default: os.environ), else the declared default."""
    var = _var(var)
    raw = raw_value(var, env)
    return default(var) if raw is None else parse(var, raw)


# ------------------------------------------------------------------------------------------------ settings objects

T = TypeVar("T")


def setting(name: str) -> Any:
    """A dataclass field backed by a registry variable: its default is the declared one."""
    var = _var(name)
    return dataclasses.field(default=default(var), metadata={"env": name})


def load(cls: type[T], env: Mapping[str, str] | None = None, **given: Any) -> T:
    """An instance of the settings dataclass `cls`: fields made with setting() from `env`, the rest from `given`."""
    values = dict(given)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f.metadata.get("env")
        if name is not None and f.name not in values:
            values[f.name] = read(name, env)
    return cls(**values)


def env_names(cls: type) -> dict[str, str]:
    """field name -> variable name of a settings dataclass."""
    return {f.name: f.metadata["env"] for f in dataclasses.fields(cls) if "env" in f.metadata}


@dataclass(frozen=True)
class CoreSettings:
    """What the shared core reads (the database, the spec file, the COPY reader, MLflow, the gate's override):
    scoring/db.py, scoring/spec.py, scoring/pgcopy.py, the Airflow task bodies and the containers' checks."""

    database_url: str = setting("DATABASE_URL")
    models_file: Path | None = setting("MODELS_FILE")
    copy_reader: str = setting("SCORING_COPY_READER")
    psql_bin: Path | None = setting("PSQL_BIN")
    mlflow_tracking_uri: str | None = setting("MLFLOW_TRACKING_URI")
    allow_ungated: bool = setting("SERVING_ALLOW_UNGATED")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CoreSettings:
        return load(cls, env)


@dataclass(frozen=True)
class BenchSettings:
    """The benches' defaults for their command-line options (bench/*.py)."""

    duration: int = setting("BENCH_DURATION")
    rounds: int = setting("BENCH_ROUNDS")
    jobs: int = setting("BENCH_JOBS")
    serving_workers: int = setting("SERVING_WORKERS")
    serving_threads: int = setting("SERVING_THREADS")
    payload_sample_rate: float = setting("SERVING_PAYLOAD_SAMPLE_RATE")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BenchSettings:
        return load(cls, env)


def check_all(env: Mapping[str, str] | None = None, components: Iterable[str] | None = None) -> None:
    """Parse every declared variable of these components present in `env`; the first bad one raises."""
    wanted = set(components or COMPONENTS)
    for var in _VARS:
        if wanted & set(var.components):
            read(var, env)


# ------------------------------------------------------------------------------------------------ generation


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _shown_default(var: Var) -> str:
    if var.default is not None:
        return "`(empty)`" if var.default == "" else f"`{var.default}`"
    return var.default_doc or "unset"


def _type(var: Var) -> str:
    if var.kind in ("choice", "list"):
        joined = ", ".join(var.choices)
        return f"{'one of' if var.kind == 'choice' else 'comma list of'} {joined}"
    bounds = ""
    if var.positive:
        bounds = " > 0"
    elif var.low is not None and var.high is not None:
        bounds = f" {var.low:g}..{var.high:g}"
    elif var.low is not None:
        bounds = f" >= {var.low:g}"
    return var.kind + bounds


def render_markdown() -> str:
    """The settings tables (docs/settings.md), one per group, in registry order."""
    lines = ["Generated from `scoring/settings.py` by `make settings`; do not edit by hand. *Read by*: the "
             "components that read (or set) it; third-party variables name the program that interprets them.",
             ""]
    group = None
    for var in _VARS:
        if var.group != group:
            if group is not None:
                lines.append("")
            group = var.group
            lines += [f"**{group}**", "", "| variable | type | default | read by | what |", "|---|---|---|---|---|"]
        doc = var.doc + (" *Secret.*" if var.secret else "") + (f" ({var.third_party})" if var.third_party else "")
        lines.append(f"| `{var.name}` | {_cell(_type(var))} | {_cell(_shown_default(var))} | "
                     f"{', '.join(var.components)} | {_cell(doc)} |")
    return "\n".join(lines) + "\n"


_ENV_HEADER = """\
# Settings of the container deployment (docker-compose.yaml). Copy to `.env` (git-ignored) and fill in:
#   cp .env.example .env
# Generate the keys with:
#   python -c "import secrets; print(secrets.token_urlsafe(32))"                              # secrets, tokens
#   python -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"   # AIRFLOW_FERNET_KEY
# Passwords end up inside connection URLs: use URL-safe characters (letters, digits, - _ . ~).
#
# Generated from scoring/settings.py by `make settings`; do not edit by hand (the README lists every variable).
"""

# Set per service by docker-compose.yaml's `environment:` (which wins over `.env`): not offered in .env.example.
COMPOSE_SETS = frozenset({"DATABASE_URL", "MLFLOW_TRACKING_URI", "SERVING_MODEL", "SERVING_BIND"})
_CONTAINER_COMPONENTS = frozenset({"serving", "gunicorn", "worker", "batch"})


def render_env_example() -> str:
    """.env.example: compose's variables (secrets empty), then the containers' optional settings commented out."""
    lines = [_ENV_HEADER]
    for var in _VARS:
        if not var.dotenv:
            continue
        value = "" if var.secret else (var.example if var.example is not None else var.default or "")
        lines += [f"# {var.doc}" + (" Secret." if var.secret else ""), f"{var.name}={value}", ""]
    lines += ["# Optional: every platform container reads .env (env_file), so these apply to all of them.",
              "# Uncomment to change a default (the values shown are the defaults).", ""]
    for var in _VARS:
        optional = (_CONTAINER_COMPONENTS & set(var.components) and not var.dotenv
                    and var.name not in COMPOSE_SETS and var.default is not None and not var.third_party)
        if optional:
            lines += [f"# {var.doc}", f"# {var.name}={var.default}"]
    return "\n".join(lines) + "\n"


def readme_with_table(text: str) -> str:
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        raise SettingsError(f"{README.name}: the markers {BEGIN} ... {END} are missing")
    return text[:begin + len(BEGIN)] + "\n" + render_markdown() + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the settings registry.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the settings tables")
    group.add_argument("--env-example", action="store_true", help="print .env.example")
    group.add_argument("--write", action="store_true", help="rewrite docs/settings.md's tables and .env.example")
    group.add_argument("--check", action="store_true", help="validate the current environment")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(render_markdown())
    elif args.env_example:
        sys.stdout.write(render_env_example())
    elif args.write:
        README.write_text(readme_with_table(README.read_text()))
        ENV_EXAMPLE.write_text(render_env_example())
        print(f"wrote {README.name} (settings table) and {ENV_EXAMPLE.name}")
    else:
        try:
            check_all()
        except SettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
