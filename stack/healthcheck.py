"""Container healthchecks without curl in the image (docker-compose.yaml):

    python -m stack.healthcheck http http://localhost:8000/healthz   # 2xx within 5 s
    python -m stack.healthcheck worker                               # the async worker runs and its DB answers
    python -m stack.healthcheck airflow-job DagProcessorJob          # this container's Airflow job heartbeats
    python -m stack.healthcheck celery-ping                          # this container's Celery worker answers

Exit 0 when healthy, 1 (with the reason on stderr) when not.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from scoring.settings import CoreSettings, load, setting


@dataclass(frozen=True)
class AirflowChecks:
    """What the Airflow containers' checks read (their own environment, as Airflow does)."""

    metadata_url: str | None = setting("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    broker_url: str | None = setting("AIRFLOW__CELERY__BROKER_URL")


def check_http(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"no answer ({getattr(exc, 'reason', exc)})"


def check_worker() -> str | None:
    # The worker is the container's main process (PID 1): if it died the container would be gone, but a
    # worker that cannot reach its queue is up yet useless.
    cmdline = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "serving.job_worker" not in cmdline:
        return f"PID 1 is not the worker ({cmdline.strip()!r})"
    import psycopg

    try:
        psycopg.connect(CoreSettings.from_env().database_url, connect_timeout=3).close()
    except (ValueError, psycopg.Error) as exc:  # ValueError: a malformed DATABASE_URL (SettingsError)
        return f"queue database unreachable: {exc}"
    return None


# Airflow's own `airflow jobs check` costs seconds of CPU a call (it imports Airflow); this is one query.
JOB_ALIVE = """SELECT 1 FROM job WHERE job_type = %s AND hostname = %s AND state = 'running'
               AND latest_heartbeat > now() - make_interval(secs => %s) LIMIT 1"""


def check_airflow_job(job_type: str, within_s: float = 60) -> str | None:
    """A running `job_type` row of this host in Airflow's metadata DB with a heartbeat in the last `within_s`
    (Airflow's own threshold is a few heartbeats; a loaded host gets more)."""
    import socket

    import psycopg

    url = (load(AirflowChecks).metadata_url or "").replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            alive = conn.execute(JOB_ALIVE, (job_type, socket.getfqdn(), within_s)).fetchone()
    except (ValueError, psycopg.Error) as exc:
        return f"Airflow's database unreachable: {exc}"
    return None if alive else f"no {job_type} of {socket.getfqdn()} heartbeating in the last {within_s:.0f}s"


def check_celery_ping() -> str | None:
    """`celery inspect ping -d celery@<this host>` through Airflow's broker, without importing Airflow (its app
    costs seconds of CPU a call)."""
    import socket

    from celery import Celery

    destination = f"celery@{socket.gethostname()}"
    app = Celery(broker=load(AirflowChecks).broker_url)
    try:
        answers = app.control.ping(destination=[destination], timeout=5)
    except Exception as exc:  # noqa: BLE001 - any broker failure is an unhealthy worker, named
        return f"broker unreachable: {exc}"
    return None if answers else f"{destination} did not answer a ping within 5 s"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        reason = check_http(argv[1])
    elif argv == ["worker"]:
        reason = check_worker()
    elif argv == ["celery-ping"]:
        reason = check_celery_ping()
    elif len(argv) == 2 and argv[0] == "airflow-job":
        reason = check_airflow_job(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
