"""`make restart-serving`: replace every gunicorn replica, one at a time, without a failed request.

Per replica: the gateway takes it out of rotation (config with the replica `down`, graceful nginx reload: new
requests go to the others, requests in flight finish), SIGTERM lets gunicorn finish what it holds, a fresh
replica starts on the same port and must answer /readyz (model loaded, database reachable; /healthz when the
old one was not ready either, e.g. before any model was trained), then the gateway puts it back. The next
replica goes only after that, so each model always has a serving replica (with 2 or more replicas).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from stack.catalogue import Service, catalogue, http_probe, launch, served_models
from stack.config import StackConfig
from stack.gateway import GatewayError, reload, write_config
from stack.procs import alive, read_pid, tail, terminate

Out = Callable[[str], None]


class RollingError(RuntimeError):
    pass


def _ready(url: str) -> bool:
    return http_probe(f"{url}/readyz")(None) is None


def _wait(svc: Service, path: str, timeout: float, proc) -> str | None:  # noqa: ANN001 - a Popen
    probe = http_probe(f"{svc.url}{path}")
    deadline = time.monotonic() + timeout
    reason = "not checked"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"process exited with code {proc.returncode}"
        reason = probe(None)
        if reason is None:
            return None
        time.sleep(0.3)
    return f"not answering {path} after {timeout:.0f}s: {reason}"


def _set_rotation(cfg: StackConfig, models: list[str], down: set[str], gateway_pid: int | None) -> None:
    write_config(cfg, models, down=down)
    if gateway_pid is not None:
        reload(gateway_pid)


def rolling_restart(cfg: StackConfig, out: Out = print, ready_timeout: float = 120.0,
                    models: list[str] | None = None, names: Collection[str] | None = None) -> list[str]:
    """Restart every serving replica (of `models`, default all; only those called `names` when given) in turn;
    returns their names. Raises RollingError naming the replica that did not come back (the others keep serving;
    the gateway's config is restored)."""
    services, _ = catalogue(cfg)
    serving = [s for s in services if s.component == "serving"
               and (models is None or s.env.get("SERVING_MODEL") in models) and (names is None or s.name in names)]
    if not serving:
        raise RollingError(f"no serving replicas{' of ' + ', '.join(models) if models else ''} in this stack")
    gw_record = read_pid(cfg.pid_file("gateway"))
    gateway_pid = gw_record.pid if alive(gw_record) else None
    models = served_models()
    done: list[str] = []
    for svc in serving:
        began = time.monotonic()
        record = read_pid(cfg.pid_file(svc.name))
        was_ready = alive(record) and _ready(svc.url or "")
        address = svc.upstream or f"{cfg.host}:{svc.port}"
        try:
            if gateway_pid is not None:
                _set_rotation(cfg, models, {address}, gateway_pid)
            if record is not None and alive(record):
                terminate(record, timeout=30)  # gunicorn's graceful stop: requests in hand are answered
            proc, _ = launch(cfg, svc)
            reason = _wait(svc, "/readyz" if was_ready else "/healthz", ready_timeout, proc)
            if reason:
                raise RollingError(f"{svc.name}: did not come back: {reason}; last lines of "
                                   f"{cfg.log_file(svc.name)}:\n{tail(cfg.log_file(svc.name))}")
        except GatewayError as exc:
            raise RollingError(f"gateway: {exc}") from exc
        finally:
            if gateway_pid is not None:
                _set_rotation(cfg, models, set(), gateway_pid)
        done.append(svc.name)
        out(f"{svc.name}: replaced ({time.monotonic() - began:.1f}s, {'ready' if was_ready else 'healthy'})")
    return done
