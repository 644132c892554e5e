"""The compose gateway, kept in step with Docker's DNS: `python -m stack.compose.resolver`.

nginx 1.22 resolves an upstream's host name once, at start: replicas added by `docker compose up --scale`, or
replaced with a new address by a rolling upgrade, would never get traffic until the gateway restarted. This
process runs nginx as its child and, every POLL_S, asks Docker's DNS for each service's addresses; when they
change it rewrites the config with the addresses themselves (stack/gateway.py compose_config) and reloads nginx
gracefully (SIGHUP: old workers finish what they hold). A replica is routed only while it answers /readyz, asked
of every address on every poll: a new one joins once its model is loaded, and one that crashed and was restarted
in place by Docker's restart policy (the same address, back in DNS before a poll could miss it) leaves while its
gunicorn, listening already, loads the model: the compose test saw lookups sent to it wait 20 s there. One gone
from DNS leaves at once (until then nginx's passive checks and retries cover it). With no answer for a service,
or none of its replicas ready (a fresh start before the first champion), the last known addresses are kept.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stack.gateway import CONF_NAME, GatewayError, compose_config, ensure_nginx, reload

POLL_S = 0.5  # a crashed replica is seen gone (refused) before its restarted gunicorn listens again (~1 s)
ROUTING = "routing.json"
APISERVER = "airflow-apiserver"


def lookup(name: str) -> list[str]:
    """The service's container addresses from Docker's DNS (sorted; empty when it has none)."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({info[4][0] for info in infos})


def ready(ip: str, port: int = 8000) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def next_addresses(current: dict[str, list[str]], answers: dict[str, list[str]],
                   is_ready: Callable[[str], bool]) -> dict[str, list[str]]:
    """The addresses to route to: each service's DNS answers that are ready now (serving replicas; Airflow's
    api-server as DNS names it); no answer, or none ready, keeps the current list (else every answer)."""
    gated = sorted({ip for service, found in answers.items() if service != APISERVER for ip in found})
    with ThreadPoolExecutor(max(1, min(16, len(gated)))) as pool:  # one slow replica does not hold up the poll
        readiness = dict(zip(gated, pool.map(is_ready, gated), strict=True))
    out: dict[str, list[str]] = {}
    for service, found in answers.items():
        known = current.get(service, [])
        if not found:
            out[service] = known
            continue
        chosen = [ip for ip in found if service == APISERVER or readiness[ip]]
        out[service] = chosen or known or found
    return out


def write(models: list[str], workdir: Path, addresses: dict[str, list[str]]) -> None:
    """The nginx config for `addresses`, and ROUTING (what the gateway routes to: read by operators' tools)."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    for name, text in ((CONF_NAME, compose_config(models, workdir, addresses)), (ROUTING, json.dumps(addresses))):
        tmp = workdir / f"{name}.new"
        tmp.write_text(text)
        tmp.replace(workdir / name)


def supervise(models: list[str], workdir: Path) -> int:
    services = [f"serving-{m}{kind}" for m in models for kind in ("", "-jobs")] + [APISERVER]
    addresses = next_addresses({}, {s: lookup(s) for s in services}, ready)
    write(models, workdir, addresses)
    binary = ensure_nginx()
    nginx = subprocess.Popen([binary, "-e", "stderr", "-p", str(workdir), "-c", str(workdir / CONF_NAME)])
    stopping = False

    def stop(signum: int, _frame: object) -> None:  # docker stop: nginx's graceful shutdown (SIGQUIT)
        nonlocal stopping
        stopping = True
        nginx.send_signal(signal.SIGQUIT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"gateway: routing {addresses}", flush=True)
    while nginx.poll() is None:
        time.sleep(POLL_S)
        if stopping:
            continue
        wanted = next_addresses(addresses, {s: lookup(s) for s in services}, ready)
        if wanted == addresses:
            continue
        write(models, workdir, wanted)
        check = subprocess.run([binary, "-t", "-q", "-p", str(workdir), "-c", str(workdir / CONF_NAME)],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            print(f"gateway: new config refused, keeping {addresses}: {check.stderr.strip()}", flush=True)
            write(models, workdir, addresses)
            time.sleep(10 * POLL_S)
            continue
        try:
            reload(nginx.pid)
        except GatewayError as exc:
            print(f"gateway: {exc}", flush=True)
        print(f"gateway: routing {wanted} (was {addresses})", flush=True)
        addresses = wanted
    return nginx.returncode or 0


def main(argv: list[str] | None = None) -> int:
    from scoring.spec import load_specs

    parser = argparse.ArgumentParser(prog="python -m stack.compose.resolver", description=__doc__)
    parser.add_argument("--workdir", default="/tmp/gateway")
    args = parser.parse_args(argv)
    return supervise([n for n, spec in load_specs().items() if spec.serving.online], Path(args.workdir))


if __name__ == "__main__":
    sys.exit(main())
