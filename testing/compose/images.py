"""The images a compose deployment needs on an engine that may reach no registry.

The official images (docker-compose.yaml's defaults) are used when present or pullable. When a pull fails, a
stand-in is built from Debian packages (testing/compose/standins/) on a Debian base made with debootstrap from
the mirror apt already uses. The platform image installs its Python packages from a wheelhouse built on the host
(`pip wheel`, with the host's pip configuration) and served to the build over HTTP on Docker's bridge.

Everything expensive is cached outside the checkout (CACHE), keyed by a hash of its inputs, and images are
reused by tag: a second run on the same machine builds nothing that did not change.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testing.compose.engine import CACHE, HERE, bridge_ip, digest, run, say

REPO = HERE.parent.parent
STANDINS = HERE / "standins"
SUITE, VARIANT = "bookworm", "minbase"
# Beyond requirements.txt (resolved on the host's Python): pyproject.toml's build backend, for the image's editable
# install; async-timeout, which redis needs on a Python older than 3.11.3 (the stand-in's Debian 3.11.2).
EXTRA_WHEELS = ("setuptools", "async-timeout")
# The official images docker-compose.yaml uses by default, each overridable from .env by this variable.
OFFICIAL = {"PYTHON_BASE_IMAGE": ("python:3.11-slim", "python"),
            "POSTGRES_IMAGE": ("postgres:15", "postgres"),
            "REDIS_IMAGE": ("redis:7.2-bookworm", "redis")}


@dataclass(frozen=True)
class BaseImages:
    env: dict[str, str]  # PYTHON_BASE_IMAGE=..., POSTGRES_IMAGE=..., REDIS_IMAGE=...
    standins: list[str]  # the variables whose official image could not be had


def image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], check=False).returncode == 0


def pull(tag: str, timeout: float = 60) -> bool:
    try:
        return run(["docker", "pull", "-q", tag], check=False, timeout=timeout).returncode == 0
    except TimeoutError:
        return False
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired and friends: no registry
        return False


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org."""
    for path in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(Path("/etc/apt/sources.list.d").glob("*")):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"(?:URIs:|^deb)\s+(\S+/debian)/?\s*$|^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+"
                                 + SUITE, text, re.MULTILINE):
            return match[1] or match[2]
    return "http://deb.debian.org/debian"


def debian_base() -> str:
    """A Debian image made with debootstrap (its root file system cached as a tarball); returns its tag."""
    mirror = debian_mirror()
    key = digest(SUITE, VARIANT, mirror)
    tag = f"msp-fixture/debian:{SUITE}-{key}"
    if image_exists(tag):
        return tag
    tarball = CACHE / f"rootfs-{SUITE}-{key}.tar"
    if not tarball.exists():
        root = CACHE / f"rootfs-{key}.tmp"
        shutil.rmtree(root, ignore_errors=True)
        say(f"debootstrap --variant={VARIANT} {SUITE} from {mirror} (a few minutes, cached in {tarball})")
        began = time.monotonic()
        run(["debootstrap", f"--variant={VARIANT}", SUITE, str(root), mirror], timeout=1800)
        run(["tar", "-C", str(root), "-cf", f"{tarball}.part", "."])
        Path(f"{tarball}.part").rename(tarball)
        shutil.rmtree(root, ignore_errors=True)
        say(f"rootfs made in {time.monotonic() - began:.0f}s")
    with tarball.open("rb") as f:
        run(["docker", "import", "-", tag], stdin=f)
    return tag


def standin(kind: str, base: str) -> str:
    """The stand-in image for `kind` (python, postgres, redis) on `base`, built unless its tag exists."""
    folder = STANDINS / kind
    tag = f"msp-fixture/{kind}:{digest(base, folder)}"
    if not image_exists(tag):
        say(f"building the {kind} stand-in {tag}")
        run(["docker", "build", "-q", "--build-arg", f"BASE={base}", "-t", tag, str(folder)], timeout=1800)
    return tag


def base_images() -> BaseImages:
    """The official images where they can be had, stand-ins for the others (said on stderr)."""
    env: dict[str, str] = {}
    missing: list[str] = []
    for var, (official, _) in OFFICIAL.items():
        if image_exists(official) or pull(official):
            env[var] = official
        else:
            missing.append(var)
    if missing:
        base = debian_base()
        for var in missing:
            env[var] = standin(OFFICIAL[var][1], base)
    for var, (official, _) in OFFICIAL.items():
        used = "official" if var not in missing else f"STAND-IN (could not pull {official})"
        say(f"{var}={env[var]}: {used}")
    return BaseImages(env, missing)


# --- the wheelhouse --------------------------------------------------------------------------------------------

def wheelhouse() -> Path:
    """Wheels for requirements.txt (built by the host's pip from its own indexes), cached by the file's hash, plus
    EXTRA_WHEELS (added when missing)."""
    reqs = REPO / "requirements.txt"
    target = CACHE / f"wheelhouse-{digest(reqs)}"
    if not target.exists():
        part = Path(f"{target}.part")
        shutil.rmtree(part, ignore_errors=True)
        say(f"building the wheelhouse {target} (pip wheel -r requirements.txt)")
        began = time.monotonic()
        run([sys.executable, "-m", "pip", "wheel", "-q", "-r", str(reqs), "-w", str(part)], timeout=3600)
        part.rename(target)
        say(f"wheelhouse built in {time.monotonic() - began:.0f}s")
    for name in EXTRA_WHEELS:
        if not any(target.glob(f"{name.replace('-', '_')}-*.whl")):
            run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", name, "-w", str(target)], timeout=600)
    return target


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # the build's pip fetches hundreds of files
        pass


@contextmanager
def serve_wheels(folder: Path) -> Iterator[str]:
    """Serve `folder` on Docker's bridge address; yields pip's --find-links URL. The port is derived from the
    folder's name so that the build argument (part of Docker's layer cache key) is the same on every run."""
    host = bridge_ip()
    preferred = 20000 + int(digest(folder.name), 16) % 10000
    handler = functools.partial(_Quiet, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer((host, preferred), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def build_platform(tag: str, python_base: str, *, label: str = "") -> float:
    """Build ./Dockerfile as `tag` on `python_base`, pip from the wheelhouse; returns the seconds it took."""
    wheels = wheelhouse()
    began = time.monotonic()
    with serve_wheels(wheels) as url:
        argv = ["docker", "build", "-q", "--force-rm", "-t", tag, "--build-arg", f"PYTHON_BASE_IMAGE={python_base}",
                "--build-arg", f"PIP_FIND_LINKS={url}", "--build-arg", f"PIP_TRUSTED_HOST={bridge_ip()}",
                "--network", "bridge"]
        if label:
            argv += ["--label", label]
        run([*argv, str(REPO)], timeout=3600)
    return time.monotonic() - began
