"""Changes to a running compose deployment without a failed side-effect-free request: scaling a replica set and
rolling a new platform image out service by service.

A replica set is rolled by surge: as many new containers as there are old ones are started beside them (compose
`--scale` with `--no-recreate`, so the old ones are kept), and the old ones are stopped (SIGTERM: gunicorn
finishes what it holds) only once the gateway routes to the new ones (it adds a replica once /readyz answers:
stack/compose/resolver.py). Services of one container are recreated in place (`up -d --no-deps`).
"""

from __future__ import annotations

import json
import time

from stack.compose.resolver import ROUTING
from testing.compose.deployment import Deployment
from testing.compose.engine import EngineError, run, say


def container_ip(container: str) -> str:
    out = run(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", container]).stdout
    networks = json.loads(out)
    return next(iter(networks.values()))["IPAddress"]


def routed(dep: Deployment) -> dict[str, list[str]]:
    """What the gateway routes to now (stack/compose/resolver.py writes it down)."""
    out = dep.exec("gateway", "cat", f"/tmp/gateway/{ROUTING}", check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}


def wait_routed(dep: Deployment, service: str, ips: set[str], timeout: float = 300) -> None:
    """Until the gateway routes `service` to exactly `ips`."""
    deadline = time.monotonic() + timeout
    while set(routed(dep).get(service, [])) != ips:
        if time.monotonic() > deadline:
            changes = [ln for ln in dep.logs("gateway", tail=400).splitlines() if "gateway: " in ln][-8:]
            raise EngineError(f"the gateway routes {service} to {routed(dep).get(service)}, not {sorted(ips)}, "
                              f"after {timeout:.0f}s; /readyz from the gateway: {readiness(dep, ips)}; its last "
                              "routing changes:\n" + "\n".join(changes))
        time.sleep(1)


def readiness(dep: Deployment, ips: set[str]) -> dict[str, str]:
    """Each address's /readyz as the gateway's container sees it (status and the start of the body)."""
    probe = ("import sys, urllib.request\n"
             "try: r = urllib.request.urlopen(f'http://{sys.argv[1]}:8000/readyz', timeout=5); "
             "print(r.status, r.read(200).decode())\n"
             "except Exception as e: print(type(e).__name__, str(getattr(e, 'read', lambda: b'')()[:200]) or e)\n")
    return {ip: dep.exec("gateway", "python", "-c", probe, ip, check=False).stdout.strip() for ip in sorted(ips)}


def names(dep: Deployment, service: str) -> list[str]:
    return sorted(c["Name"] for c in dep.containers(service))


def scale(dep: Deployment, service: str, replicas: int, env: dict[str, str] | None = None) -> list[str]:
    """`up -d --scale service=N` (others untouched); returns the containers after, once routed by the gateway."""
    dep.compose("up", "-d", "--no-deps", "--no-recreate", "--wait", "--scale", f"{service}={replicas}", service,
                env=env, timeout=600)
    now = names(dep, service)
    if len(now) != replicas:
        raise EngineError(f"{service}: {len(now)} containers after scaling to {replicas}: {now}")
    wait_routed(dep, service, {container_ip(c) for c in now})
    return now


def roll_replicas(dep: Deployment, service: str, env: dict[str, str]) -> list[str]:
    """Replace every container of `service` with one from `env`'s image, by surge; returns the new ones."""
    old = names(dep, service)
    scale(dep, service, 2 * len(old), env)
    new = [c for c in names(dep, service) if c not in old]
    run(["docker", "stop", "--time", "30", *old], timeout=120)
    wait_routed(dep, service, {container_ip(c) for c in new})
    run(["docker", "rm", *old])
    say(f"rolled {service}: {old} -> {new}")
    return new


def recreate(dep: Deployment, services: list[str], env: dict[str, str]) -> None:
    """Recreate services in place with `env`'s image, all at once (one `up`: in one after the other, waiting for
    each to be healthy, Airflow's five took most of an 8-minute upgrade), until every one is healthy."""
    dep.compose("up", "-d", "--no-deps", "--wait", *services, env=env, timeout=900)
    say(f"recreated {', '.join(services)}")
