"""Safe rollout's cost to the champion's clients (a scenario of `make bench-online`, issue 24), through real
nginx gateways (stack.gateway.start_standalone) in front of the bench's live app:

  gw-off         live predict through a gateway with no canary: every request on the champion (the bench's
                 live app, 2 workers)
  gw-canary10    the same through a gateway splitting 10% to a canary replica (1 worker, SERVING_MODEL_REF = a
                 copy of the champion's version: another number, the same booster; on a Unix socket as the
                 champion and as `make up`'s canary replicas), the champion as its backup
  gw-shadow      gw-off while the async worker runs the online shadow at its defaults (serving/shadow.py: every
                 WORKER_SHADOW_INTERVAL_S it scores the payload log's sample, SERVING_PAYLOAD_SAMPLE_RATE, with a
                 `challenger`); gw-off is the same gateway with that worker paused (SIGSTOP). Resumed, the shadow
                 first catches up on the rows the paused runs logged, before the gw-shadow run starts: a shadow
                 running all along has no such backlog (measured with it, the run paid for three runs' rows)

The runs alternate for `rounds` rounds; each figure is its median over them. Targets: gw-canary10
>= 0.9x gw-off's req/s with the champion's clients' p99 within 20% (the requests the split sent to the champion,
their latency as the gateway's access log has it, as the rollout watcher reads it; wrk's p99 of every client,
the canary's too, is printed beside it); gw-shadow >= 0.9x gw-off's req/s; 0 answers from the challenger
(checked after the runs by asking through the gateway; the shadow's rows are counted in the payload log).

How bench/online.py calls it (before it stops MLflow: the canary and challenger load from the registry first):

    from bench import rollout_bench
    prepared = rollout_bench.prepare(platform, MODEL, version, f"unix:{app_socket}", env, live_bodies[0])
    ...  platform.stop_mlflow() ...
    runs = rollout_bench.measure(prepared, wrk, predict, live_bodies, args.duration, args.rounds)
    figures = rollout_bench.report(runs)      # "canary_vs_off=X shadow_vs_off=Y" for the last line
    rollout_bench.close(prepared)
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CANARY_PERCENT = 10.0


@dataclass
class Prepared:
    model: str
    version: str  # the champion's
    canary_version: str
    challenger_version: str
    off_url: str
    canary_url: str
    champion: str  # the champion's address as the gateways name it in their access log (upstream)
    root: Path
    worker: Any  # testing.servers.AsyncWorker running the online shadow
    gateways: list[subprocess.Popen] = field(default_factory=list)


@dataclass
class Runs:
    results: dict[str, Any]  # name -> bench.online.Result (medians over the rounds; errors summed)
    champion_p99_ms: dict[str, float]  # name -> p99 of the requests the champion answered in that run (gateway log)
    challenger_answers: int  # answers naming the challenger's version (target 0)
    shadow_rows: int  # rows the challenger wrote to the payload log during the runs


def _post(url: str, body: str) -> dict:
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _wait_version(url: str, version: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
                if json.loads(resp.read()).get("model_version") == version:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not load version {version} within {timeout:.0f}s")


def prepare(platform: Any, model: str, version: str, champion: str, env: dict[str, str], body: str) -> Prepared:
    """Start what the scenario needs beside the bench's live app (`champion`: how a gateway reaches it, e.g.
    unix:/path): a canary replica, two gateways (off; 10% canary), an async worker shadowing with a challenger."""
    from mlflow import MlflowClient

    from scoring.registry import CHALLENGER
    from stack.gateway import Split, Upstreams, start_standalone
    from stack.pg import free_port
    from testing.model_copy import register_copy

    canary_version = register_copy(model, version)
    challenger_version = register_copy(model, version, approved=False)  # a challenger is not gate-approved
    MlflowClient().set_registered_model_alias(model, CHALLENGER, challenger_version)
    root = platform.root / "rollout-bench"
    root.mkdir(exist_ok=True)
    port, socket = free_port(), root / "canary.sock"
    platform.gunicorn(model, port, "serving.app:create_app()",
                      {**env, "SERVING_WORKERS": "1", "SERVING_MODEL_REF": canary_version,
                       "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --bind unix:{socket}"})
    _wait_version(f"http://127.0.0.1:{port}", canary_version)
    canary = f"unix:{socket}"  # as `make up` routes its canary replicas, and as `champion` is reached
    off_port, canary_port = free_port(), free_port()
    gateways = [start_standalone({model: Upstreams([champion])}, off_port, root / "gw-off", root / "gw-off.log"),
                start_standalone({model: Upstreams([champion], canary=[canary])}, canary_port, root / "gw-canary",
                                 root / "gw-canary.log", splits={model: Split(CANARY_PERCENT)})]
    worker = platform.worker(model, "rollout-bench-shadow-worker", env)
    worker.wait_ready()
    deadline = time.time() + 60
    while "online shadow" not in worker.text() and f"now serving version {challenger_version}" not in worker.text():
        if time.time() > deadline:
            break  # measured anyway; the shadow row count says whether it worked
        time.sleep(0.5)
    _pause(worker, True)  # until its own runs: the other scenarios' runs are measured without the shadow
    prepared = Prepared(model, version, canary_version, challenger_version, f"http://127.0.0.1:{off_port}",
                        f"http://127.0.0.1:{canary_port}", champion, root, worker, gateways)
    path = f"/v1/models/{model}/predict"
    for url in (prepared.off_url, prepared.canary_url):
        _post(url + path, body)  # each gateway answers before any run
    return prepared


def _pause(worker: Any, paused: bool) -> None:
    if worker.proc.poll() is None:
        os.killpg(worker.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)


def _shadow_rows(model: str, version: str) -> int:
    from scoring.db import connect
    from scoring.rollout import SHADOW_ROUTE

    with connect() as conn:
        return conn.execute("SELECT count(*) FROM ops.online_payloads WHERE model_name = %s AND route = %s "
                            "AND model_version = %s", (model, SHADOW_ROUTE, int(version))).fetchone()[0]


def _catch_up(model: str, timeout: float = 90.0) -> float:
    """Resumed after a paused run, the shadow first scores the rows logged meanwhile (up to WORKER_SHADOW_MAX_ROWS
    a pass); a shadow that runs all along never has that backlog, so the gw-shadow run starts once it is gone.
    Returns the seconds it took."""
    from scoring.db import connect
    from scoring.rollout import SHADOW_ROUTE

    newest = ("SELECT max(logged_at) FILTER (WHERE route <> %s), max(logged_at) FILTER (WHERE route = %s) "
              "FROM ops.online_payloads WHERE model_name = %s AND log_date >= (now() AT TIME ZONE 'UTC')::date - 1")
    t0 = time.monotonic()
    with connect() as conn:
        logged, _ = conn.execute(newest, (SHADOW_ROUTE, SHADOW_ROUTE, model)).fetchone()
        while logged is not None and time.monotonic() - t0 < timeout:
            _, shadowed = conn.execute(newest, (SHADOW_ROUTE, SHADOW_ROUTE, model)).fetchone()
            if shadowed is not None and shadowed >= logged:
                break
            time.sleep(0.5)
    return time.monotonic() - t0


def measure(p: Prepared, wrk: str, path: str, bodies: list[str], duration: int, rounds: int) -> Runs:
    """wrk on gw-off (shadow paused), gw-canary10 (shadow paused) and gw-shadow (shadow running), alternated."""
    from bench.online import lua_post, run_wrk
    from stack.rollout import AccessLog

    script = lua_post(path, bodies)
    runs = (("gw-off", p.off_url, True), ("gw-canary10", p.canary_url, True), ("gw-shadow", p.off_url, False))
    logs = {"gw-off": p.root / "gw-off" / "access.log", "gw-canary10": p.root / "gw-canary" / "access.log",
            "gw-shadow": p.root / "gw-off" / "access.log"}
    tries: dict[str, list[tuple[Any, float]]] = {}
    before = 0
    try:
        _pause(p.worker, False)  # the rows the other scenarios logged meanwhile: scored first, not measured
        print(f"  shadow caught up on the rows logged before this scenario in {_catch_up(p.model, 900):.1f} s",
              flush=True)
        before = _shadow_rows(p.model, p.challenger_version)
        for rnd in range(1, rounds + 1):
            for name, url, paused in runs:
                _pause(p.worker, paused)
                if not paused:
                    print(f"  round {rnd} shadow caught up on the paused runs' rows in {_catch_up(p.model):.1f} s",
                          flush=True)
                access = AccessLog(logs[name])
                access.skip()
                r = run_wrk(wrk, name, url, script, duration, p.root)
                # the champion's clients: the requests the split sent to the champion (all of them without a canary)
                arm = [e.latency_ms for e in access.read() if e.upstream == p.champion]
                arm_p99 = float(np.percentile(arm, 99)) if arm else float("nan")
                print(f"  round {rnd} {name:<12} {r.rps:>8.0f} req/s  p99 {r.p99_ms:7.2f} ms  champion's p99 "
                      f"{arm_p99:7.2f} ms ({len(arm)} requests)  errors {r.errors}", flush=True)
                tries.setdefault(name, []).append((r, arm_p99))
    finally:
        _pause(p.worker, False)
    time.sleep(6)  # the shadow's last pass (WORKER_SHADOW_INTERVAL_S, default 5 s)
    shadow_rows = _shadow_rows(p.model, p.challenger_version) - before
    answers = [_post(url + path, bodies[i % len(bodies)])["model_version"]
               for i in range(200) for url in (p.off_url, p.canary_url)]
    medians, champion_p99 = {}, {}
    for name, got in tries.items():  # each figure its median over the rounds (a noisy machine: no best-of)
        first = got[0][0]
        medians[name] = type(first)(name, statistics.median(r.rps for r, _ in got),
                                    statistics.median(r.p50_ms for r, _ in got),
                                    statistics.median(r.p99_ms for r, _ in got), sum(r.errors for r, _ in got),
                                    sum(r.requests for r, _ in got))
        champion_p99[name] = statistics.median(p99 for _, p99 in got)
    return Runs(medians, champion_p99, sum(v == p.challenger_version for v in answers), shadow_rows)


def report(runs: Runs) -> str:
    """The scenario's table and targets; returns the figures for the bench's last line."""
    off, canary, shadow = (runs.results[k] for k in ("gw-off", "gw-canary10", "gw-shadow"))
    print(f"\nsafe rollout through the gateway: {CANARY_PERCENT:g}% canary, online shadow at its defaults")
    print(f"{'run':<12} {'req/s':>9} {'p99 ms':>8} {'champion p99':>13} {'errors':>7}")
    for r in (off, canary, shadow):
        print(f"{r.name:<12} {r.rps:>9.0f} {r.p99_ms:>8.2f} {runs.champion_p99_ms[r.name]:>13.2f} {r.errors:>7}")
    print("(p99: every client as wrk saw it; champion p99: the requests the champion answered, from the gateway's "
          "access log, the champion's clients of the target)")
    canary_ratio, shadow_ratio = canary.rps / off.rps, shadow.rps / off.rps
    p99_change = runs.champion_p99_ms["gw-canary10"] / runs.champion_p99_ms["gw-off"] - 1
    all_change = canary.p99_ms / off.p99_ms - 1
    print(f"rollout targets: canary {canary_ratio:.2f}x off (target >= 0.9: "
          f"{'met' if canary_ratio >= 0.9 else 'MISSED'}), champion's p99 {p99_change:+.0%} (target within 20%: "
          f"{'met' if abs(p99_change) <= 0.2 else 'MISSED'}; every client's {all_change:+.0%});"
          f" shadow {shadow_ratio:.2f}x off (target >= 0.9: "
          f"{'met' if shadow_ratio >= 0.9 else 'MISSED'}), {runs.shadow_rows} rows scored in shadow, "
          f"{runs.challenger_answers} challenger answers to clients (target 0)")
    return f"canary_vs_off={canary_ratio:.2f} champion_p99_vs_off={1 + p99_change:.2f} shadow_vs_off={shadow_ratio:.2f}"


def close(p: Prepared) -> None:
    """Stop the gateways (the canary replica and the worker are the platform's: platform.close() stops them)."""
    from stack.services import stop_process

    _pause(p.worker, False)
    for proc in p.gateways:
        stop_process(proc)


def main(argv: list[str] | None = None) -> int:
    """The scenario alone (`python bench/rollout_bench.py --duration 2 --rounds 1`: a smoke run): its own
    PostgreSQL, MLflow and model, as bench/online.py's, and the same live app (2 workers, payload logging on)."""
    import argparse
    import json as _json

    from bench.online import (
        MODEL,
        ensure_model_and_predictions,
        sample_records,
        start_stack,
        wait_workers_loaded,
    )
    from scoring.settings import BenchSettings
    from stack.debian import ensure_wrk
    from stack.pg import free_port
    from stack.services import wait_http
    from testing.platform import Platform

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--duration", type=int, default=BenchSettings.from_env().duration)
    parser.add_argument("--rounds", type=int, default=BenchSettings.from_env().rounds)
    parser.add_argument("--customers", type=int, default=20_000)
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    platform = Platform("bench-rollout-", databases=("serving", "mlflow"))
    prepared = None
    try:
        start_stack(platform, 30, args.customers)
        from scoring.spec import load_spec

        spec = load_spec(MODEL)
        version, day, _ = ensure_model_and_predictions(spec, None)
        bodies = [_json.dumps({"records": [r]}, default=float) for r in sample_records(spec, day, 200)]
        env = {"DATABASE_URL": os.environ["DATABASE_URL"], "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
               "SERVING_POLL_INTERVAL_S": "3600", "SERVING_ACCESS_LOG": ""}
        port, socket = free_port(), platform.root / "live.sock"
        app = platform.gunicorn(MODEL, port, "serving.app:create_app()",
                                {**env, "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --bind unix:{socket}"})
        wait_http(f"http://127.0.0.1:{port}/readyz", 60, app, "serving app ready")
        wait_workers_loaded(f"http://127.0.0.1:{port}", BenchSettings.from_env().serving_workers, version)
        prepared = prepare(platform, MODEL, version, f"unix:{socket}", env, bodies[0])
        platform.stop_mlflow()  # every process has its versions loaded; MLflow would only take CPU
        runs = measure(prepared, wrk, f"/v1/models/{MODEL}/predict", bodies, args.duration, args.rounds)
        print(f"rollout {report(runs)}")
        return 0
    finally:
        if prepared is not None:
            close(prepared)
        platform.close()


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
