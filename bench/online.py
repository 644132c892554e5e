"""Online serving benchmark (`make bench-online`): wrk on loopback, 32 connections, one row per request.

Side by side, in one run, under the same gunicorn settings (serving/gunicorn.conf.py, SERVING_* env):
  ceiling     bare Flask "hello" (testing/reference_apps.py)
  mlflow      `mlflow models serve --workers 2 --env-manager local` on the same registered version (a peer)
  mlserver    MLServer 1.7.1 + mlserver-xgboost on the same booster, OIP REST, parallel_workers 0, in a venv of
              its own (a peer; settings and why in bench/peers/mlserver.py)
  live        POST /v1/models/churn/predict            (the platform's live predict, shared scorer; payload
                                                         logging at its default rate, SERVING_PAYLOAD_SAMPLE_RATE)
  explain     POST /v1/models/churn/predict with "explain": {"top_k": 3}: live predict with its exact reasons
              (TreeSHAP); target: p99 within the model's latency budget, >= 0.25x live
  live-nolog  the same app with payload logging off (SERVING_PAYLOAD_SAMPLE_RATE=0): what logging costs
  invocations POST /invocations                         (MLflow protocol on the platform)
  lookup      GET  /v1/models/churn/predictions/<id>    (precomputed batch predictions, PostgreSQL PK lookup)
  floor-flask the shared scorer behind the thinnest Flask route      (reference: the most a Flask live predict
  floor-wsgi  the same as a plain WSGI callable, no Flask              and any live predict under gunicorn can do)
  gw-live, gw-lookup   live and lookup through the gateway (nginx, stack/gateway.py) in front of the same app as
                       live and lookup, reached over a Unix socket (as `make up` does: STACK_GATEWAY_UNIX)
  gw-live-tcp, gw-lookup-tcp   the same through a second gateway reaching that app over loopback TCP (the A/B)
  gw-live-slow8        gw-live with 8 slow clients held open (headers and part of a body, a byte every 2 s)
  gw-off, gw-canary10, gw-shadow   live through a gateway without a canary, with a 10% canary, and with the online
                       shadow running (bench/rollout_bench.py; --skip-rollout leaves them out)
  rest-1, grpc-1, grpc-100  REST /v2 infer and gRPC ModelInfer (1 and 100 rows) on one replica, driven by h2load
                       (rest-1 by wrk; bench/grpc_infer.py; --skip-grpc leaves them out); gw-rest-1,
                       gw-grpc-1, gw-grpc-100 the same through a gateway's REST and gRPC listeners (the targets)

By default it starts its own PostgreSQL, MLflow server and trained model (testing/platform.py) under a temp dir
and removes them after;
pass --database-url and --tracking-uri to use running services (the model must have a champion and the latest
day must have precomputed predictions). Installs `wrk` and `h2load` (nghttp2-client) with apt-get when missing.
The last line is:
  online live_rps=X vs_best_peer=Yx live_vs_floor_flask=F lookup_vs_ceiling=W p99_ms=P errors=E
         [grpc_1row_vs_rest=G grpc_100row_rows_vs_1row=H] [canary_vs_off=C champion_p99_vs_off=Q shadow_vs_off=S]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scoring.settings import BenchSettings  # noqa: E402
from stack.debian import ensure_wrk  # noqa: E402
from stack.gateway import start_standalone  # noqa: E402
from stack.pg import free_port  # noqa: E402
from stack.services import VENV_BIN, stop_process, wait_http  # noqa: E402
from testing.platform import Platform, train_champion  # noqa: E402

MODEL = "churn"
CONNECTIONS = 32


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def lua_post(path: str, bodies: list[str], content_type: str = "application/json") -> str:
    items = ",\n".join(f"  {json.dumps(b)}" for b in bodies)
    return f"""
local bodies = {{
{items}
}}
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "{path}", {{["Content-Type"] = "{content_type}"}}, bodies[i])
end
""" + _DONE


def lua_get(prefix: str, n_ids: int) -> str:
    return f"""
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "{prefix}" .. math.random(1, {n_ids}))
end
""" + _DONE


def wrk_json(wrk: str, lua: Path, url: str, duration: int, connections: int = CONNECTIONS, threads: int = 2
             ) -> dict:
    """Run wrk with `lua` (whose done() prints one `WRKJSON {...}` line) and return that JSON; RuntimeError with
    wrk's output when there is none. Threads: 2 by default (the machine has 2 cores shared with the servers)."""
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({lua.stem}): {out.stdout[-1000:]} {out.stderr[-1000:]}")
    return json.loads(line[len("WRKJSON "):])


def run_wrk(wrk: str, name: str, url: str, script: str, duration: int, workdir: Path,
            connections: int = CONNECTIONS, threads: int = 2) -> Result:
    lua = workdir / f"{name}.lua"
    lua.write_text(script)
    d = wrk_json(wrk, lua, url, duration, connections, threads)
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    return Result(name, d["requests"] / (d["duration_us"] / 1e6), d["p50_us"] / 1000, d["p99_us"] / 1000, errors,
                  d["requests"])


@contextlib.contextmanager
def slow_clients(port: int, path: str, n: int = 8):  # noqa: ANN201 - a context manager
    """n connections that send headers and part of a body, then a byte every 2 s (under the gateway's body
    timeout), held open for the whole block."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for s in socks:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 100000\r\n\r\n{{".encode())
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(2):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(b" ")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for s in socks:
            s.close()


def check_ok(method: str, url: str, body: str | None = None, content_type: str = "application/json") -> None:
    """One request before each run: a benchmark of error responses would be meaningless."""
    import urllib.request

    req = urllib.request.Request(url, data=body.encode() if body else None, method=method,
                                 headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{method} {url} answered {resp.status}")


def start_stack(platform: Platform, days: int, customers: int) -> None:
    """PostgreSQL (migrated) and MLflow of the bench's own, pointed at by DATABASE_URL / MLFLOW_TRACKING_URI,
    with `days` of demo features ending yesterday."""
    platform.database()
    platform.mlflow()
    platform.features(dt.date.today() - dt.timedelta(days=1), days, customers)


def ensure_model_and_predictions(spec, day: dt.date | None) -> tuple[str, dt.date, int]:
    """The champion (trained if missing) and precomputed predictions for the latest feature day."""
    from scoring.db import connect
    from scoring.registry import RegistryError, resolve_version

    with connect() as conn:
        latest = conn.execute("SELECT max(snapshot_date) FROM features.customer_daily").fetchone()[0]
        day = day or latest
        try:
            version = resolve_version(spec.name)
        except RegistryError:
            # The gate's latency check runs on this busy machine; the benchmark needs a version either way.
            version = train_champion(spec, os.environ["DATABASE_URL"], day + dt.timedelta(days=1),
                                     force=True).version
        done = conn.execute("SELECT count(*) FROM ops.batch_runs WHERE model_name = %s AND status = 'success' "
                            "AND prediction_date = %s", (spec.name, day)).fetchone()[0]
        n_ids = conn.execute("SELECT count(*) FROM features.customer_daily WHERE snapshot_date = %s",
                             (day,)).fetchone()[0]
        if done:
            return version, day, n_ids
        # Precomputed predictions written by the nightly batch's own path (scoring.batch).
        from scoring.batch import run_batch

        run_batch(spec, day, f"bench_{uuid.uuid4().hex[:8]}", version=version)
        conn.execute("ANALYZE " + spec.prediction_table)
        conn.commit()
    return version, day, n_ids


def sample_records(spec, day: dt.date, n: int) -> list[dict]:
    from psycopg import sql

    from scoring.db import connect

    with connect() as conn:
        rows = conn.execute(sql.SQL("SELECT {} FROM features.customer_daily WHERE snapshot_date = %s LIMIT %s")
                            .format(sql.SQL(", ").join(map(sql.Identifier, spec.feature_names))), (day, n)).fetchall()
    return [dict(zip(spec.feature_names, r, strict=True)) for r in rows]


def wait_workers_loaded(base: str, workers: int, version: str, timeout: float = 120) -> None:
    """Until every gunicorn worker has the version loaded (one serving_model_version sample per worker): the
    registry is stopped before the runs, and a worker still loading then would serve 503s."""
    import urllib.request

    deadline = time.time() + timeout
    while True:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            lines = [ln for ln in resp.read().decode().splitlines() if ln.startswith("serving_model_version{")]
        if sum(ln.endswith(f" {float(version)}") for ln in lines) >= workers:
            return
        if time.time() > deadline:
            raise RuntimeError(f"only {len(lines)} of {workers} workers loaded version {version}: {lines}")
        time.sleep(0.5)


def payload_counts(base: str) -> tuple[float, float]:
    """(rows logged, rows dropped) by the app's payload log, from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    counts = {"logged": 0.0, "dropped": 0.0}
    for line in lines:
        if line.startswith("serving_payload_rows_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts["logged" if outcome == "logged" else "dropped"] += float(line.rsplit(" ", 1)[1])
    return counts["logged"], counts["dropped"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=BenchSettings.from_env().duration,
                        help="seconds per wrk run (default %(default)s, BENCH_DURATION)")
    parser.add_argument("--database-url", help="use this serving database instead of starting PostgreSQL")
    parser.add_argument("--tracking-uri", help="use this MLflow server instead of starting one")
    parser.add_argument("--days", type=int, default=30, help="feature history to seed (own stack only)")
    parser.add_argument("--customers", type=int, default=20_000, help="customers per day (own stack only)")
    parser.add_argument("--rounds", type=int, default=BenchSettings.from_env().rounds,
                        help="round-robin rounds over the targets; each keeps its best run "
                             "(default %(default)s, BENCH_ROUNDS)")
    parser.add_argument("--skip-mlflow-serve", action="store_true", help="do not run the mlflow models serve peer")
    parser.add_argument("--skip-mlserver", action="store_true", help="do not run the MLServer peer")
    parser.add_argument("--skip-grpc", action="store_true", help="do not run the gRPC vs REST /v2 scenario")
    parser.add_argument("--skip-rollout", action="store_true", help="do not run the canary / online shadow scenario")
    parser.add_argument("--mlserver-venv", type=Path, default=None,
                        help="an existing venv with MLServer (default: the bench's own, "
                             ".local/bench-venvs/mlserver, built from bench/peers/mlserver-requirements.txt)")
    args = parser.parse_args(argv)

    wrk = ensure_wrk()
    platform = Platform("bench-online-", databases=("serving", "mlflow"))
    root = platform.root
    procs: list[subprocess.Popen] = []  # besides the platform's own (stopped by platform.close())
    own_stack = not (args.database_url and args.tracking_uri)
    rollout = None  # bench/rollout_bench.py's Prepared, when that scenario runs
    try:
        if not own_stack:
            os.environ["DATABASE_URL"] = args.database_url
            os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
        else:
            print(f"starting PostgreSQL + MLflow under {root}; seeding {args.days} days x {args.customers} "
                  f"customers ...", flush=True)
            start_stack(platform, args.days, args.customers)
        from scoring.spec import load_spec

        spec = load_spec(MODEL)
        version, day, n_ids = ensure_model_and_predictions(spec, None)
        print(f"model {MODEL} version {version}; precomputed predictions for {day} ({n_ids} entities)", flush=True)

        records = sample_records(spec, day, 200)
        live_bodies = [json.dumps({"records": [r]}) for r in records]
        from scoring.encoding import encode

        matrix = encode(spec, records).matrix
        inv_bodies = [json.dumps({"dataframe_split": {"columns": spec.feature_names,
                                                      "data": [[None if v != v else float(v) for v in row]]}})
                      for row in matrix.tolist()]

        env = {"DATABASE_URL": os.environ["DATABASE_URL"], "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
               "SERVING_ACCESS_LOG": str(root / "access.log"),
               "SERVING_POLL_INTERVAL_S": os.environ.get("SERVING_POLL_INTERVAL_S", "3600")}
        settings = {k: v for k, v in os.environ.items() if k.startswith("SERVING_")}
        print(f"gunicorn settings: workers={BenchSettings.from_env().serving_workers} "
              f"threads={BenchSettings.from_env().serving_threads} {settings or ''}", flush=True)
        # All servers are started first and stay up (idle ones cost nothing); the wrk runs then go round-robin
        # for --rounds rounds and each target keeps its best run: on a shared machine this compares the
        # targets under similar noise instead of whatever happened to run during a busy moment.
        targets: list[tuple[str, str, str]] = []  # (name, url, lua script)
        port = free_port()
        platform.gunicorn(MODEL, port, "testing.reference_apps:hello()", env)
        check_ok("GET", f"http://127.0.0.1:{port}/hello")
        targets.append(("ceiling", f"http://127.0.0.1:{port}/hello", 'wrk.method = "GET"\n' + _DONE))

        if not args.skip_mlflow_serve:
            port = free_port()
            log = open(root / "mlflow-serve.log", "ab")  # noqa: SIM115
            peer = subprocess.Popen(
                [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/{version}", "--env-manager",
                 "local", "--workers", "2", "-h", "127.0.0.1", "-p", str(port)], stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"})
            procs.append(peer)
            wait_http(f"http://127.0.0.1:{port}/ping", 180, peer, "mlflow models serve")
            check_ok("POST", f"http://127.0.0.1:{port}/invocations", inv_bodies[0])
            targets.append(("mlflow", f"http://127.0.0.1:{port}", lua_post("/invocations", inv_bodies)))

        port = free_port()
        app_socket = root / "live.sock"  # the gateway's way in; the direct runs use the TCP port
        app = platform.gunicorn(MODEL, port, "serving.app:create_app()",
                                {**env, "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --bind unix:{app_socket}"})
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", 60, app, "serving app ready")
        wait_workers_loaded(base, BenchSettings.from_env().serving_workers, version)
        predict = f"/v1/models/{MODEL}/predict"
        prefix = f"/v1/models/{MODEL}/predictions/"
        check_ok("POST", base + predict, live_bodies[0])
        check_ok("POST", base + "/invocations", inv_bodies[0])
        check_ok("GET", base + prefix + str(random.randint(1, n_ids)))
        # issue 22: the same app answering with exact reasons (the gate measured them within the budget)
        explain_bodies = [json.dumps({"records": [r], "explain": {"top_k": 3}}) for r in records]
        check_ok("POST", base + predict, explain_bodies[0])
        targets.append(("explain", base, lua_post(predict, explain_bodies)))
        targets += [("live", base, lua_post(predict, live_bodies)),
                    ("invocations", base, lua_post("/invocations", inv_bodies)),
                    ("lookup", base, lua_get(prefix, n_ids))]
        # The same app, payload logging off, bound the same way (a TCP port and a Unix socket, as `make up`'s
        # replicas): gunicorn's sync worker blocks in accept() with one listener but select()s over two, so a
        # one-listener nolog app measured the listener count as well as the payload log.
        port, nolog_socket = free_port(), root / "live-nolog.sock"
        nolog = platform.gunicorn(MODEL, port, "serving.app:create_app()",
                                  {**env, "SERVING_PAYLOAD_SAMPLE_RATE": "0",
                                   "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --bind unix:{nolog_socket}"})
        nolog_base = f"http://127.0.0.1:{port}"
        wait_http(nolog_base + "/readyz", 60, nolog, "serving app (payload logging off) ready")
        wait_workers_loaded(nolog_base, BenchSettings.from_env().serving_workers, version)
        check_ok("POST", nolog_base + predict, live_bodies[0])
        targets.append(("live-nolog", nolog_base, lua_post(predict, live_bodies)))
        gw_port, tcp_port = free_port(), free_port()
        procs.append(start_standalone({MODEL: [f"unix:{app_socket}"]}, gw_port, root / "gateway", root / "gw.log"))
        procs.append(start_standalone({MODEL: [base.removeprefix("http://")]}, tcp_port, root / "gateway-tcp",
                                      root / "gw-tcp.log"))
        gw, gw_tcp = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{tcp_port}"
        check_ok("POST", gw + predict, live_bodies[0])
        check_ok("POST", gw_tcp + predict, live_bodies[0])
        targets += [("gw-live", gw, lua_post(predict, live_bodies)), ("gw-lookup", gw, lua_get(prefix, n_ids)),
                    ("gw-live-tcp", gw_tcp, lua_post(predict, live_bodies)),
                    ("gw-lookup-tcp", gw_tcp, lua_get(prefix, n_ids)),
                    ("gw-live-slow8", gw, lua_post(predict, live_bodies))]
        from scoring.registry import load_booster

        model_file = root / "reference-model.ubj"
        load_booster(MODEL, version).save_model(model_file)
        for name, factory in (("floor-flask", "floor_flask()"), ("floor-wsgi", "floor_wsgi()")):
            port = free_port()
            platform.gunicorn(MODEL, port, f"testing.reference_apps:{factory}",
                              {**env, "REFERENCE_MODEL_FILE": str(model_file)})
            check_ok("POST", f"http://127.0.0.1:{port}/predict", live_bodies[0])
            targets.append((name, f"http://127.0.0.1:{port}", lua_post("/predict", live_bodies)))

        if not args.skip_mlserver:  # the second peer: MLServer on the same booster, OIP REST, one row a request
            from bench.peers import mlserver

            exe = mlserver.ensure_venv(args.mlserver_venv)
            ports = (free_port(), free_port(), free_port())
            folder = mlserver.write_model_folder(root / "mlserver", load_booster(MODEL, version), MODEL, ports)
            peer = mlserver.start(exe, folder, root / "mlserver.log")
            procs.append(peer)
            ml_url = f"http://127.0.0.1:{ports[0]}"
            wait_http(f"{ml_url}/v2/models/{MODEL}/ready", 180, peer, "mlserver")
            oip_bodies = mlserver.infer_bodies(matrix)
            check_ok("POST", f"{ml_url}/v2/models/{MODEL}/infer", oip_bodies[0])
            targets.append(("mlserver", ml_url, lua_post(f"/v2/models/{MODEL}/infer", oip_bodies)))

        grpc_doors = []
        if not args.skip_grpc:  # one replica serving REST /v2 and gRPC, and a gateway for both (bench/grpc_infer.py)
            from bench.grpc_infer import Door
            from stack.gateway import Upstreams
            from testing.servers import wait_grpc

            http_port, grpc_port, gw_http, gw_grpc = free_port(), free_port(), free_port(), free_port()
            grpc_socket = root / "grpc-replica.sock"
            platform.gunicorn(MODEL, http_port, "serving.app:create_app()",
                              {**env, "SERVING_GRPC_PORT": str(grpc_port),
                               "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{http_port} --bind unix:{grpc_socket}"})
            wait_workers_loaded(f"http://127.0.0.1:{http_port}", BenchSettings.from_env().serving_workers, version)
            wait_grpc(f"127.0.0.1:{grpc_port}", 60, "gRPC replica")
            procs.append(start_standalone({MODEL: Upstreams([f"unix:{grpc_socket}"],
                                                            grpc=[f"127.0.0.1:{grpc_port}"])},
                                          gw_http, root / "gateway-grpc", root / "gw-grpc.log", grpc_port=gw_grpc))
            wait_grpc(f"127.0.0.1:{gw_grpc}", 60, "the gateway's gRPC listener")
            grpc_doors = [Door("", ("127.0.0.1", http_port), f"127.0.0.1:{grpc_port}"),
                          Door("gw-", ("127.0.0.1", gw_http), f"127.0.0.1:{gw_grpc}")]

        if not args.skip_rollout:  # issue 24: a 10% canary and the online shadow (bench/rollout_bench.py)
            from bench import rollout_bench

            rollout = rollout_bench.prepare(platform, MODEL, version, f"unix:{app_socket}", env, live_bodies[0])
        if own_stack:
            # Every target has its model in memory now; the registry is on no request path. Our own tracking
            # server (and its background job consumers) would only compete for the 2 cores during the runs.
            platform.stop_mlflow()
        results: dict[str, Result] = {}
        all_errors: dict[str, int] = {}
        every: dict[str, list[float]] = {}  # req/s of each run: the gateway's A/B is told by medians
        for rnd in range(1, args.rounds + 1):
            for name, url, script in targets:
                held = slow_clients(gw_port, predict) if name.endswith("slow8") else contextlib.nullcontext()
                with held:
                    r = run_wrk(wrk, name, url, script, args.duration, root)
                print(f"  round {rnd} {name:<12} {r.rps:>8.0f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:7.2f} ms"
                      f"  errors {r.errors}", flush=True)
                all_errors[name] = all_errors.get(name, 0) + r.errors
                every.setdefault(name, []).append(r.rps)
                if name not in results or r.rps > results[name].rps:
                    results[name] = r
        for name, r in results.items():
            r.errors = all_errors[name]  # errors are counted over every run, not only the best

        grpc_figures = ""
        if grpc_doors:
            from bench import grpc_infer

            grpc_runs = grpc_infer.scenario(MODEL, grpc_doors, matrix[:1], matrix[:100], args.duration, args.rounds)
        rollout_figures = ""
        if rollout is not None:
            rollout_runs = rollout_bench.measure(rollout, wrk, predict, live_bodies, args.duration, args.rounds)

        print(f"\nbest of {args.rounds} round(s), {args.duration}s each, {CONNECTIONS} connections, "
              "one row per request")
        print(f"{'run':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'requests':>9}")
        for r in results.values():
            print(f"{r.name:<12} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7} {r.requests:>9}")
        ceiling, live, lookup = results["ceiling"], results["live"], results["lookup"]
        lookup_ratio = lookup.rps / ceiling.rps
        p99 = max(live.p99_ms, lookup.p99_ms)
        errors = sum(results[k].errors for k in ("live", "invocations", "lookup", "live-nolog"))
        flask_floor, wsgi_floor = results["floor-flask"], results["floor-wsgi"]
        nolog_run = results["live-nolog"]
        logged, dropped = payload_counts(base)
        print(f"\npayload logging (rate {BenchSettings.from_env().payload_sample_rate:g}): live {live.rps:.0f} req/s = "
              f"{live.rps / nolog_run.rps:.2f}x live-nolog {nolog_run.rps:.0f} (target >= 0.95); p99 {live.p99_ms:.1f} "
              f"vs {nolog_run.p99_ms:.1f} ms; rows logged {logged:.0f}, dropped {dropped:.0f}")
        explain, budget = results["explain"], spec.serving.latency_budget_ms
        print(f"explain (exact reasons, top 3): {explain.rps:.0f} req/s = {explain.rps / live.rps:.2f}x live "
              f"(target >= 0.25: {'met' if explain.rps >= 0.25 * live.rps else 'MISSED'}); p99 {explain.p99_ms:.1f} ms "
              f"(budget {budget:g} ms: {'met' if explain.p99_ms <= budget else 'MISSED'}); errors {explain.errors}")
        gw_live, gw_lookup, slow = results["gw-live"], results["gw-lookup"], results["gw-live-slow8"]
        gw_ratios = (gw_live.rps / live.rps, gw_lookup.rps / lookup.rps)
        print(f"gateway: live {gw_ratios[0]:.2f}x direct, lookup {gw_ratios[1]:.2f}x direct (best runs; target >= "
              f"0.9); with 8 slow clients open: errors={slow.errors} (target 0), p99 {slow.p99_ms:.1f} ms vs "
              f"{gw_live.p99_ms:.1f} ms without (target within 20%)")
        median = {name: statistics.median(rates) for name, rates in every.items()}
        print(f"gateway A/B, medians of {args.rounds} alternated runs: live direct {median['live']:.0f}, unix "
              f"{median['gw-live']:.0f} ({median['gw-live'] / median['live']:.2f}x), tcp {median['gw-live-tcp']:.0f} "
              f"({median['gw-live-tcp'] / median['live']:.2f}x); lookup direct {median['lookup']:.0f}, unix "
              f"{median['gw-lookup']:.0f} ({median['gw-lookup'] / median['lookup']:.2f}x), tcp "
              f"{median['gw-lookup-tcp']:.0f} ({median['gw-lookup-tcp'] / median['lookup']:.2f}x) req/s")
        peers = {k: results[k].rps for k in ("mlflow", "mlserver") if k in results}
        best_peer = max(peers, key=peers.__getitem__) if peers else None
        vs_best = live.rps / peers[best_peer] if best_peer else float("nan")
        print("position: " + ", ".join(f"live/{k}={live.rps / v:.2f}x" for k, v in peers.items())
              + f"; fastest peer {best_peer} ({peers.get(best_peer, float('nan')):.0f} req/s); "
              f"live/floor-flask={live.rps / flask_floor.rps:.2f} live/floor-wsgi={live.rps / wsgi_floor.rps:.2f} "
              f"live/ceiling={live.rps / ceiling.rps:.2f} lookup/ceiling={lookup_ratio:.2f}")
        if grpc_doors:
            grpc_figures = " " + grpc_infer.report(grpc_runs)
        if rollout is not None:
            rollout_figures = " " + rollout_bench.report(rollout_runs)
        targets = {"live >= 3x the fastest peer": vs_best >= 3,
                   "live >= 0.9x floor-flask": live.rps >= 0.9 * flask_floor.rps,
                   "live with payload logging >= 0.95x live-nolog": live.rps >= 0.95 * nolog_run.rps,
                   "lookup >= 0.6x ceiling": lookup_ratio >= 0.6, "p99 <= 30 ms": p99 <= 30, "0 errors": not errors,
                   "live and lookup through the gateway >= 0.9x direct": min(gw_ratios) >= 0.9}
        print("targets: " + "; ".join(f"{name}: {'met' if met else 'MISSED'}" for name, met in targets.items()))
        print(f"online live_rps={live.rps:.0f} vs_best_peer={vs_best:.2f}x "
              f"live_vs_floor_flask={live.rps / flask_floor.rps:.2f} lookup_vs_ceiling={lookup_ratio:.2f} "
              f"payload_log_vs_off={live.rps / nolog_run.rps:.2f} p99_ms={p99:.1f} errors={errors}{grpc_figures}"
              f"{rollout_figures}")
        return 0
    except Exception:
        for log in sorted(root.glob("gunicorn-*.log")):
            print(f"--- {log.name}\n{log.read_text()[-1500:]}", file=sys.stderr)
        raise
    finally:
        if rollout is not None:
            rollout_bench.close(rollout)
        for proc in procs:
            stop_process(proc)
        platform.close()


if __name__ == "__main__":
    sys.exit(main())
