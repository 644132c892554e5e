"""`python -m stack.rollout`: canary traffic at the gateway, and its rollback on evidence (local stack).

    status                          every model's champion, canary, share and latest rollout events
    start <model> <version> [--percent 10]   the gate-approved `version` becomes the canary with that share
    share <model> <percent>         move the share (0 -> 10 -> 50 -> 100 and back: no request fails)
    promote <model>                 the canary becomes champion (the champion replicas hot-reload it)
    abort <model> [--reason ...]    the share to 0, the reason recorded
    check [<model>]                 compare each running canary with its champion now; roll back past a limit
    apply                           make the gateway follow the registry (what `watch` does every tick)
    watch                           the loop `make up` runs when STACK_CANARY_REPLICAS > 0: apply, then check,
                                    every STACK_ROLLOUT_CHECK_S

The registry holds the state (scoring/rollout.py: alias `canary`, tag `rollout.canary_percent`); `apply` writes
it into the gateway's config (stack/gateway_conf.py Split: nginx split_clients over the champion's and the
canary's replicas) and reloads nginx gracefully, only once the canary replicas have loaded the version (a share
never goes to replicas still loading). A share moved anywhere (this CLI, the MLflow UI, the rollout_<model> DAG)
reaches the gateway within a tick.

The evidence: error rate and latency p99 per arm from the gateway's access log (every request as the client saw
it; the arm is the replica the split chose, the first address of `upstream`), logged scores and labels per
version from the payload log (scoring/rollout.py). The check runs in the watcher rather than in an Airflow DAG:
it needs the gateway's log and acts on the gateway, both on this host, and a 30 s loop reacts faster than a DAG
schedule would; promote and abort are also one DAG run each (dags/rollout_models.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoring import rollout
from scoring.spec import ModelSpec, load_specs
from stack.config import ConfigError, StackConfig
from stack.gateway import (
    GatewayError,
    Split,
    access_log_path,
    canary_replicas,
    read_splits,
    reload,
    replicas,
    write_config,
    write_splits,
)
from stack.procs import alive, read_pid

log = logging.getLogger("stack.rollout")
Out = Callable[[str], None]

# the model of a sync route, as the gateway routes it (stack/gateway_conf.py)
_MODEL = re.compile(r"^/(?:v1/models|v2/models|models|endpoints)/([A-Za-z0-9_.-]+)(?:[/?]|$)")


# --- the gateway's access log: one entry per request --------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    at: float  # epoch seconds
    model: str
    upstream: str  # the first replica tried (the split's choice)
    error: bool  # that replica answered 5xx (or failed), or the client got a 5xx
    latency_ms: float


def parse_entry(line: str) -> Entry | None:
    """One JSON line of the gateway's log format (stack/gateway_conf.py), None for anything not a sync route."""
    try:
        doc = json.loads(line)
        match = _MODEL.match(doc["uri"])
        if match is None or not doc.get("upstream") or "/jobs" in doc["uri"]:
            return None
        first = re.split(r", | : ", doc["upstream"])[0]
        statuses = [s for s in re.split(r", | : ", str(doc.get("upstream_status", ""))) if s.strip()]
        failed = not statuses or not statuses[0].isdigit() or int(statuses[0]) >= 500
        return Entry(dt.datetime.fromisoformat(doc["ts"]).timestamp(), match.group(1), first,
                     failed or int(doc["status"]) >= 500, float(doc["request_time"]) * 1000)
    except (ValueError, KeyError, TypeError):
        return None


class AccessLog:
    """Reads the lines the gateway appended since the last read (starting `tail_bytes` before the end)."""

    def __init__(self, path: Path, tail_bytes: int = 32 << 20) -> None:
        self.path = path
        size = path.stat().st_size if path.exists() else 0
        self.offset = max(0, size - tail_bytes)
        self._partial = self.offset > 0  # started mid-file: the first line is cut

    def skip(self) -> None:
        """Past everything written so far, unread (no canary running: nothing to judge, nothing to parse)."""
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = False

    def read(self) -> list[Entry]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            if fh.seek(0, 2) < self.offset:  # truncated or rotated: start over
                self.offset, self._partial = 0, False
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # only whole lines; the rest is read next time
        self.offset += end
        lines = data[:end].decode(errors="replace").splitlines()
        if self._partial and lines:
            lines, self._partial = lines[1:], False
        return [e for e in map(parse_entry, lines) if e is not None]


@dataclass
class _Second:
    at: int
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # while the second is current
    counts: Any = None  # then: a histogram over scoring.rollout.LATENCY_EDGES_MS

    def histogram(self) -> Any:
        if self.latencies:
            return rollout.latency_counts(self.latencies) + (0 if self.counts is None else self.counts)
        return self.counts


class Window:
    """The requests of the last `keep_s` seconds per (model, replica), kept per second as counts and a latency
    histogram (the watcher's memory between ticks: a few MB at any request rate, not a list of requests)."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.seconds: dict[tuple[str, str], deque[_Second]] = {}

    def add(self, entries: Iterable[Entry], now: float | None = None) -> None:
        for e in entries:
            queue = self.seconds.setdefault((e.model, e.upstream), deque())
            if not queue or queue[-1].at != int(e.at):
                queue.append(_Second(int(e.at)))
            second = queue[-1]
            second.requests += 1
            second.errors += e.error
            second.latencies.append(e.latency_ms)
        cutoff = (now or time.time()) - self.keep_s
        for queue in self.seconds.values():
            while queue and queue[0].at < cutoff:
                queue.popleft()
            for second in list(queue)[:-1]:  # complete seconds: their latencies become counts
                if second.latencies:
                    second.counts, second.latencies = second.histogram(), []

    def arms(self, model: str, since: float, canary: set[str], champion: set[str]) -> tuple[rollout.Arm, rollout.Arm]:
        """(champion, canary) request figures of `model` since `since`."""
        arms = (rollout.Arm(None, latency_hist=rollout.latency_counts([]) * 0),
                rollout.Arm(None, latency_hist=rollout.latency_counts([]) * 0))
        for (name, upstream), queue in self.seconds.items():
            if name != model or (upstream not in canary and upstream not in champion):
                continue
            arm = arms[1] if upstream in canary else arms[0]
            for second in queue:
                if second.at + 1 > since:
                    arm.requests += second.requests
                    arm.errors += second.errors
                    arm.latency_hist = arm.latency_hist + second.histogram()
        return arms


# --- the local stack ---------------------------------------------------------------------------------------


def served(specs: dict[str, ModelSpec]) -> list[str]:
    return [name for name, spec in specs.items() if spec.serving.online]


def _canary_ready(cfg: StackConfig, model: str, models: list[str], version: str) -> bool:
    """Every canary replica of `model` answers /readyz with `version` loaded."""
    return _serving([r for r in canary_replicas(cfg, models) if r.model == model], version)


def _serving(reps: list, version: str) -> bool:  # noqa: ANN001 - stack.gateway.Replica
    """Every one of `reps` answers /readyz with `version` loaded."""
    import requests

    try:
        return bool(reps) and all(
            requests.get(f"http://{r.address}/readyz", timeout=3).json().get("model_version") == version
            for r in reps)
    except (requests.RequestException, ValueError):
        return False


def desired_splits(cfg: StackConfig, specs: dict[str, ModelSpec], states: dict[str, rollout.CanaryState],
                   out: Out = print) -> dict[str, Split]:
    """The split each model should have now: the registry's share once its canary replicas serve the version;
    until then the share already applied (a share is never moved onto replicas that have not loaded it)."""
    models = served(specs)
    applied = read_splits(cfg)
    splits: dict[str, Split] = {}
    for model, state in states.items():
        if not state.active:
            continue
        if not cfg.canary_replicas:
            out(f"{model}: canary version {state.version} at {state.percent:g}% but this stack runs no canary "
                "replicas (STACK_CANARY_REPLICAS=0): not applied")
            continue
        if _canary_ready(cfg, model, models, state.version):
            splits[model] = Split(state.percent, specs[model].rollout.sticky)
        elif model in applied:
            splits[model] = applied[model]
            out(f"{model}: canary replicas are not serving version {state.version} yet: share kept at "
                f"{applied[model].percent:g}%")
        else:
            out(f"{model}: canary replicas are not serving version {state.version} yet: share applied later")
    return splits


def apply(cfg: StackConfig, specs: dict[str, ModelSpec] | None = None, out: Out = print,
          states: dict[str, rollout.CanaryState] | None = None) -> dict[str, Split]:
    """Make the gateway follow the registry; reloads nginx (gracefully) only when the config changed."""
    specs = specs or load_specs()
    models = served(specs)
    states = states or {m: rollout.read_state(m) for m in models}
    splits = desired_splits(cfg, specs, states, out)
    if splits != read_splits(cfg):
        write_splits(cfg, splits)
    _, changed = write_config(cfg, models)
    record = read_pid(cfg.pid_file("gateway"))
    if changed and alive(record):
        reload(record.pid)
        out("gateway: canary shares now " + (", ".join(f"{m} {s.percent:g}%" for m, s in splits.items()) or "none"))
    return splits


def arm_addresses(cfg: StackConfig, model: str, models: list[str]) -> tuple[set[str], set[str]]:
    """(champion, canary) replica addresses of `model`, as the gateway's log names them."""
    champion = {r.upstream for r in replicas(cfg, models) if r.model == model and r.kind == "serving"}
    return champion, {r.upstream for r in canary_replicas(cfg, models) if r.model == model}


def check(cfg: StackConfig, spec: ModelSpec, window: Window, conn, out: Out = print,  # noqa: ANN001 - psycopg
          state: rollout.CanaryState | None = None, models: list[str] | None = None) -> list[rollout.Verdict]:
    """Compare `spec`'s running canary with its champion over the window; past a limit, roll it back (share 0,
    ops row, MLflow tag, log line) and apply. Returns the verdicts ([] when no canary runs)."""
    from scoring.registry import CHAMPION, resolve_version

    state = state or rollout.read_state(spec.name)
    if not state.active or spec.name not in read_splits(cfg):
        return []
    models = models or served(load_specs())  # every served model: the replicas' ports depend on their order
    now = time.time()
    since = max(state.since, now - spec.rollout.window_minutes * 60)
    champion_at, canary_at = arm_addresses(cfg, spec.name, models)
    champion, canary = window.arms(spec.name, since, canary_at, champion_at)
    champion.version, canary.version = resolve_version(spec.name, CHAMPION), state.version
    start = dt.datetime.fromtimestamp(since, dt.UTC)
    for arm in (champion, canary):
        arm.scores = rollout.logged_scores(conn, spec.name, arm.version, start)
        arm.labelled = rollout.labelled_scores(conn, spec, arm.version, start)
    verdicts = rollout.judge(spec, champion, canary)
    bad = rollout.crossed(verdicts)
    if bad:
        reason = "; ".join(v.describe() for v in bad)
        rollout.abort(spec.name, f"automatic rollback: {reason}", conn, action="rollback",
                      evidence=rollout.evidence(champion, canary, verdicts, start))
        apply(cfg, out=out)
        out(f"{spec.name}: canary version {state.version} ROLLED BACK: {reason}")
    return verdicts


def watch(cfg: StackConfig, out: Out = print, ticks: int | None = None) -> None:
    """apply + check every STACK_ROLLOUT_CHECK_S (forever, or `ticks` times); a failing tick is logged and the
    next one tried (MLflow or PostgreSQL away: the gateway keeps the split it has)."""
    from scoring.db import connect

    specs = load_specs()
    window = Window(max(s.rollout.window_minutes for s in specs.values()) * 60)
    reader = AccessLog(access_log_path(cfg))
    done = 0
    while ticks is None or done < ticks:
        began = time.monotonic()
        try:
            specs = load_specs()
            models = served(specs)
            states = {m: rollout.read_state(m) for m in models}
            if any(s.active for s in states.values()):
                window.add(reader.read())
            else:
                reader.skip()
                window.add([])
            apply(cfg, specs, out, states)
            if any(s.active for s in states.values()):
                with connect() as conn:
                    for model in models:
                        check(cfg, specs[model], window, conn, out, states[model], models)
        except Exception as exc:  # noqa: BLE001 - the watcher outlives a bad tick
            log.exception("rollout tick failed")
            out(f"rollout: tick failed: {type(exc).__name__}: {exc}")
        done += 1
        if ticks is None or done < ticks:
            time.sleep(max(0.0, cfg.rollout_check_s - (time.monotonic() - began)))


def _connect():  # noqa: ANN202 - a psycopg connection
    from scoring.db import connect

    return connect()


def status(cfg: StackConfig, out: Out = print) -> None:
    from scoring.registry import CHAMPION, RegistryError, resolve_version

    specs = load_specs()
    applied = read_splits(cfg)
    with _connect() as conn:
        for model in served(specs):
            try:
                state, champion = rollout.read_state(model), resolve_version(model, CHAMPION)
            except RegistryError as exc:
                out(f"{model}: {exc}")
                continue
            at = applied.get(model)
            out(f"{model}: champion {champion}; canary {state.version or 'none'} at {state.percent:g}% "
                f"(gateway: {f'{at.percent:g}%, sticky {at.sticky}' if at else 'no split'})")
            for row in conn.execute("SELECT at, action, version, percent, reason FROM ops.rollout_events WHERE "
                                    "model_name = %s ORDER BY at DESC LIMIT 5", (model,)).fetchall():
                out(f"    {row[0]:%Y-%m-%d %H:%M:%S} {row[1]:<8} v{row[2]} {row[3]:g}%  {row[4]}")


def _wait_and_apply(cfg: StackConfig, model: str, version: str, out: Out, timeout: float = 60.0, *,
                    champion: bool = False) -> None:
    """After a start: wait for the canary replicas to load the version (they poll the alias), then apply. After a
    promote (`champion`): wait for the champion's replicas to serve it before the split goes, so that the canary's
    share is not answered by the old version meanwhile (the watcher may drop the split sooner: never a failure)."""
    models = served(load_specs())
    reps = [r for r in (replicas(cfg, models) if champion else canary_replicas(cfg, models))
            if r.model == model and r.kind != "jobs"]
    deadline = time.monotonic() + timeout
    while reps and not _serving(reps, version) and time.monotonic() < deadline:
        time.sleep(1)
    apply(cfg, out=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status")
    p = sub.add_parser("start")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--percent", type=float, default=10.0)
    p = sub.add_parser("share")
    p.add_argument("model")
    p.add_argument("percent", type=float)
    p = sub.add_parser("promote")
    p.add_argument("model")
    p = sub.add_parser("abort")
    p.add_argument("model")
    p.add_argument("--reason", default="aborted by hand")
    p = sub.add_parser("check")
    p.add_argument("model", nargs="?")
    sub.add_parser("apply")
    sub.add_parser("watch")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from scoring.registry import RegistryError

    try:
        cfg = StackConfig.from_env()
        if args.command == "watch":
            watch(cfg)
        elif args.command == "status":
            status(cfg)
        elif args.command == "apply":
            apply(cfg)
        elif args.command == "check":
            specs = load_specs()
            window = Window(max(s.rollout.window_minutes for s in specs.values()) * 60)
            window.add(AccessLog(access_log_path(cfg)).read())
            with _connect() as conn:
                for model in [args.model] if args.model else served(specs):
                    for verdict in check(cfg, specs[model], window, conn, models=served(specs)):
                        print(f"{model}: {verdict.describe()}")
        else:
            with _connect() as conn:
                if args.command == "start":
                    state = rollout.start(args.model, args.version, args.percent, conn)
                    _wait_and_apply(cfg, args.model, state.version or "", print)
                elif args.command == "share":
                    rollout.set_share(args.model, args.percent, conn)
                    apply(cfg)
                elif args.command == "promote":
                    version = rollout.promote(args.model, conn)
                    print(f"{args.model}: version {version} is the champion")
                    _wait_and_apply(cfg, args.model, version, print, champion=True)
                elif args.command == "abort":
                    rollout.abort(args.model, args.reason, conn)
                    apply(cfg)
    except (rollout.RolloutError, RegistryError, GatewayError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
