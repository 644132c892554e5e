"""Starting and waiting for the platform's long-running services (shared by `make up` and the tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    pass


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, name: str = "") -> None:
    """Wait until `url` answers 2xx; fail early if the process behind it exits."""
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{name or url}: process exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise ServiceError(f"{name or url}: not healthy after {timeout:.0f}s ({last})")


def mlflow_server_command(backend_uri: str, artifacts_dir: Path, port: int, host: str = "127.0.0.1",
                          workers: int = 1) -> list[str]:
    return [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
            "--artifacts-destination", str(artifacts_dir), "--serve-artifacts",
            "--host", host, "--port", str(port), "--workers", str(workers)]


def start_mlflow(backend_uri: str, artifacts_dir: Path, port: int, log_path: Path,
                 timeout: float = 120) -> subprocess.Popen:
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(mlflow_server_command(backend_uri, artifacts_dir, port), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout, proc, "MLflow server")
    except ServiceError as exc:
        stop_process(proc)
        raise ServiceError(f"MLflow server failed to start ({exc}); see {log_path}:\n"
                           f"{log_path.read_text()[-1500:]}") from exc
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
