"""Platform processes as children of a test or bench: one model's gunicorn and async queue workers (`make up`
has its own, tracked by PID files)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from stack.services import VENV_BIN, ServiceError, stop_process, wait_http

REPO = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO / "serving" / "gunicorn.conf.py"


def start_gunicorn(model: str, port: int, log_path: Path, env: dict[str, str] | None = None,
                   app: str = "serving.app:create_app()", timeout: float = 90,
                   grpc_port: int | None = None) -> subprocess.Popen:
    """gunicorn for `model` on 127.0.0.1:port (and Open Inference over gRPC on 127.0.0.1:grpc_port, served by its
    workers); returns once /healthz (and the gRPC port) answers (raises ServiceError otherwise)."""
    full_env = {**os.environ, "SERVING_MODEL": model, "SERVING_BIND": f"127.0.0.1:{port}",
                "PROMETHEUS_MULTIPROC_DIR": str(log_path.parent / f"metrics-{model}-{port}"), **(env or {})}
    if grpc_port is not None:
        full_env["SERVING_GRPC_PORT"] = str(grpc_port)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen([str(VENV_BIN / "gunicorn"), "-c", str(GUNICORN_CONF), app], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=full_env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout, proc, f"gunicorn {model}")
        if grpc_port is not None:
            wait_grpc(f"127.0.0.1:{grpc_port}", timeout, f"gunicorn {model} gRPC")
    except ServiceError as exc:
        stop_process(proc)
        raise ServiceError(f"{exc}; see {log_path}:\n{log_path.read_text()[-3000:]}") from exc
    return proc


def wait_grpc(address: str, timeout: float, name: str) -> None:
    """Wait until a gRPC server on `address` answers ServerLive."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    deadline = time.time() + timeout
    last = ""
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.time() < deadline:
            try:
                if stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=2).live:
                    return
            except grpc.RpcError as exc:
                last = str(exc.details() if hasattr(exc, "details") else exc)
            time.sleep(0.2)
    raise ServiceError(f"{name}: not live after {timeout:.0f}s ({last})")


class AsyncWorker:
    """`python -m serving.job_worker` for `model` (settings from this process's environment plus `env`), its
    output in `log_path`. `module` may name another launcher with its arguments (e.g. a fault-injecting one)."""

    def __init__(self, model: str, log_path: Path, env: Mapping[str, str] | None = None,
                 module: str | Sequence[str] = "serving.job_worker") -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
        launcher = [module] if isinstance(module, str) else list(module)
        self.proc = subprocess.Popen([sys.executable, "-m", *launcher], cwd=REPO,
                                     env={**os.environ, "SERVING_MODEL": model, **(env or {})},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.worker_id: str | None = None

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> str:
        """The worker's id, once it has loaded its model and listens for jobs."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            match = re.search(r"worker (\S+) ready: model", self.text())
            if match:
                self.worker_id = match.group(1)
                return self.worker_id
            if self.proc.poll() is not None:
                raise ServiceError(f"worker exited early (code {self.proc.returncode}):\n{self.text()[-3000:]}")
            time.sleep(0.05)
        raise ServiceError(f"worker not ready after {timeout}s:\n{self.text()[-3000:]}")

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the worker finishes the batch in hand), SIGKILL after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
