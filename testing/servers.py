"""Start one model's gunicorn as a subprocess (used by the tests and the benchmark; `make up` has its own)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from stack.services import VENV_BIN, ServiceError, stop_process, wait_http

REPO = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO / "serving" / "gunicorn.conf.py"


def start_gunicorn(model: str, port: int, log_path: Path, env: dict[str, str] | None = None,
                   app: str = "serving.app:create_app()", timeout: float = 90) -> subprocess.Popen:
    """gunicorn for `model` on 127.0.0.1:port; returns once /healthz answers (raises ServiceError otherwise)."""
    full_env = {**os.environ, "SERVING_MODEL": model, "SERVING_BIND": f"127.0.0.1:{port}",
                "PROMETHEUS_MULTIPROC_DIR": str(log_path.parent / f"metrics-{model}-{port}"), **(env or {})}
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen([str(VENV_BIN / "gunicorn"), "-c", str(GUNICORN_CONF), app], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=full_env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout, proc, f"gunicorn {model}")
    except ServiceError as exc:
        stop_process(proc)
        raise ServiceError(f"{exc}; see {log_path}:\n{log_path.read_text()[-3000:]}") from exc
    return proc
