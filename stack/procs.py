"""Background processes of the local stack, tracked by PID files.

Each service runs in its own session (process group) so that stopping it also stops its workers (gunicorn,
uvicorn, LocalExecutor). A PID file records the PID *and* the process start time: a recycled PID that now
belongs to some other program is never mistaken for our service, and never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float
    argv: list[str]
    port: int | None = None
    kind: str = "process"  # "process": our child's process group; "pg_ctl": a PostgreSQL cluster
    # For a model's process (its replicas, its worker): the model, the component, and a fingerprint of the
    # models.yaml entry and command it was started with, so that `make up` can tell a removed or changed model.
    model: str | None = None
    component: str | None = None
    fingerprint: str | None = None


def write_pid(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record.__dict__))
    tmp.replace(path)  # atomic: a reader never sees half a file


def read_pid(path: Path) -> PidRecord | None:
    try:
        data = json.loads(path.read_text())
        return PidRecord(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def alive(record: PidRecord | None) -> bool:
    """True when the recorded process still runs and is the same process (same start time)."""
    if record is None:
        return False
    try:
        proc = psutil.Process(record.pid)
        return abs(proc.create_time() - record.create_time) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def spawn(argv: list[str], env: dict[str, str], log_path: Path, pid_path: Path, cwd: Path,
          port: int | None = None, **tags: str | None) -> tuple[subprocess.Popen, PidRecord]:
    """Start `argv` in a new session, output appended to `log_path`; record it in `pid_path` (with `tags`:
    PidRecord's model, component and fingerprint)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    record = PidRecord(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(), argv=argv, port=port,
                       **tags)
    write_pid(pid_path, record)
    return proc, record


def _family(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def terminate(record: PidRecord, timeout: float = 12.0) -> bool:
    """SIGTERM the service's process group (and any descendant that left it), SIGKILL what is left after
    `timeout`. Returns True when the process was running."""
    if not alive(record):
        return False
    family = _family(record.pid)  # collected first: once the parent exits, orphans are reparented
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGTERM)
    for proc in family[1:]:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, remaining = psutil.wait_procs(family, timeout=timeout)
    if remaining or _group_alive(record.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGKILL)
        for proc in remaining:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(remaining, timeout=5)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def port_owner(port: int) -> str:
    """Who listens on `port` ("pid 123 (nginx)"), best effort; empty when unknown."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                return f"pid {conn.pid}"
    return ""


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""
