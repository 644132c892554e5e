"""Debian packages the platform's own set-up installs when a binary it runs is missing (nginx, redis, wrk, ...)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable


class PackageError(RuntimeError):
    """A needed binary is missing and its Debian package could not be installed; the message says which."""


def _find(binary: str, extra_paths: Iterable[str]) -> str | None:
    return shutil.which(binary) or next((p for p in extra_paths if os.access(p, os.X_OK)), None)


def ensure_binary(binary: str, package: str, *, extra_paths: Iterable[str] = ()) -> str:
    """The path of `binary`; installs `package` with apt-get first when it is missing (apt-get update once, then
    retried, when the first install fails on stale package lists)."""
    extra_paths = tuple(extra_paths)
    found = _find(binary, extra_paths)
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise PackageError(f"{binary} not found and no apt-get to install it: install the package {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        result = subprocess.run(install, capture_output=True, env=env, text=True, check=False)
        if result.returncode != 0:
            raise PackageError(f"{binary} not found and `apt-get install {package}` failed: {result.stderr[-500:]}")
    found = _find(binary, extra_paths)
    if not found:
        raise PackageError(f"{package} installed but no {binary} binary found")
    return found


def ensure_wrk() -> str:
    """wrk, the benches' load generator, installed when missing; a failed install ends the bench saying why."""
    try:
        return ensure_binary("wrk", "wrk")
    except PackageError as exc:
        raise SystemExit(f"error: {exc}") from exc
