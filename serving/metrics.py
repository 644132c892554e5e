"""Prometheus metrics, correct under several gunicorn workers (prometheus_client multiprocess mode).

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module, empties it at start and
marks dead workers; /metrics then aggregates every worker's files. Without the variable (Flask test client)
the default single-process registry is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from scoring import settings

REQUESTS = Counter("serving_requests_total", "HTTP requests by route template and status",
                   ["model", "route", "method", "status"])
LATENCY = Histogram("serving_request_duration_seconds", "Request latency by route template and status",
                    ["model", "route", "status"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
ROWS = Counter("serving_predicted_rows_total", "Rows answered, by source (live or precomputed)",
               ["model", "source"])
VERSION_ROWS = Counter("serving_version_rows_total",
                       "Rows scored live, by the model version that scored them (a canary's beside its champion's)",
                       ["model", "version"])
MODEL_VERSION = Gauge("serving_model_version", "Model version loaded in each worker (0 = none)", ["model"],
                      multiprocess_mode="liveall")
RELOADS = Counter("serving_model_reloads_total", "Model versions swapped in after the first load", ["model"])
PAYLOAD_ROWS = Counter("serving_payload_rows_total",
                       "Sampled live rows for the payload log, by outcome (logged, dropped_buffer_full, "
                       "dropped_write_failed)", ["model", "outcome"])
REFUSED = Counter("serving_model_refused_total", "Model versions refused (failed to load or smoke-score)",
                  ["model"])


@dataclass(frozen=True)
class MetricsSettings:
    multiproc_dir: Path | None = settings.setting("PROMETHEUS_MULTIPROC_DIR")  # set by gunicorn.conf.py


def render() -> tuple[bytes, str]:
    if settings.load(MetricsSettings).multiproc_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def version_number(version: str | None) -> float:
    """A registry version as a number for the MODEL_VERSION gauge (0 when none or not numeric)."""
    try:
        return float(version) if version is not None else 0.0
    except ValueError:
        return 0.0
