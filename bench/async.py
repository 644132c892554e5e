"""Async queue benchmark (`make bench-async`): end to end, clients submitting over HTTP while workers drain.

It starts its own PostgreSQL cluster (durable, as `make up` runs it: fsync and synchronous_commit on), MLflow
server, a trained churn model, one gunicorn deployment (2 sync workers, as deployed; --serving-threads N for
gthread) and `python -m serving.job_worker` processes (testing/platform.py), then in one run:

1. live: single-row `POST /v1/models/churn/predict`, wrk with 32 connections (apt-get installs wrk when missing;
   the bench stops if wrk cannot run cleanly: no other client stands in) -> the live single-row rate, the reference;
2. drain: K single-row jobs queued beforehand, drained by 1 then 2 workers -> jobs/s from the jobs' own
   timestamps (first claim -> last finish);
3. kill: refill, drain with 2 workers and SIGKILL one at ~30% done holding leased jobs; they are reclaimed
   after the lease (3 s here) and finished once by the other;
4. steady, the headline: 2 workers running while clients submit K single-row jobs over HTTP with 32
   connections, in bulk requests (`POST /v1/models/churn/jobs/bulk`, --bulk-jobs per request, each job its own
   id and Idempotency-Key), then again one job per request (`POST .../jobs`: the group commit's case);
   end-to-end jobs/s = K / (first submit -> last result), p99 / max latency submit -> result;
5. steady 100-record jobs: K/10 jobs of 100 records each, one per request, 32 connections -> rows/s.
6. gateway job routes (a scenario of its own, --skip-gateway-jobs leaves it out): one job per request, end to
   end, through a gateway (nginx, stack/gateway.py) whose job routes go to the sync deployment above, then
   through one whose job routes go to a threaded replica (1 gunicorn worker x STACK_JOB_THREADS threads, as
   `make up` runs them), alternated --gateway-rounds times; medians, target threaded >= 1.5x sync. The submits
   are wrk's (--gateway-seconds, an Idempotency-Key each): the Python client of the other phases tops out near
   1,000 submits/s here and measured both sets the same. Every job wrk saw accepted is checked as above.

Every job of every phase is checked: done exactly once (`result_writes` = 1, one row per idempotency key) and,
in the steady phases, its result fetched over HTTP (`GET /v1/jobs/<id>`) and equal to Scorer.score of its
records. Last line:
`async e2e_jobs_per_s=X e2e_vs_live_single_row=Yx e2e_rows_per_s_100=Z drain_jobs_per_s=D max_latency_s=L \
lost=0 duplicated=0` (one line)
with X the steady single-row rate (bulk submits), Y = X / live rate, Z the 100-record phase's rows/s, D the
2-worker drain rate, L the max latency of the steady phases; lost/duplicated over all phases.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.online import wrk_json  # noqa: E402
from scoring.demo_data import generate_day  # noqa: E402
from scoring.migrate import apply_migrations  # noqa: E402
from scoring.scorer import Scorer  # noqa: E402
from scoring.settings import BenchSettings  # noqa: E402
from scoring.spec import load_spec  # noqa: E402
from stack.debian import ensure_wrk  # noqa: E402
from stack.pg import free_port  # noqa: E402
from stack.services import ServiceError, wait_http  # noqa: E402
from testing.platform import Platform, train_champion  # noqa: E402
from testing.servers import AsyncWorker  # noqa: E402

MODEL = "churn"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------- services


@dataclass
class Env:
    platform: Platform
    db_url: str
    mlflow_uri: str
    serving_url: str = ""

    @property
    def root(self) -> Path:
        return self.platform.root


def start_stack(args: argparse.Namespace) -> Env:
    # A queue's figures mean something only with its durability: an acknowledged job survives a crash, as on
    # `make up`'s cluster (fsync and synchronous_commit on). With them off, a commit costs no wait, and what
    # spreads commit waits (gthread job replicas, the group commit) shows no gain.
    platform = Platform("bench-async-", databases=("serving", "mlflow"), durable_postgres=args.durable)
    try:
        if args.use_env:
            env = Env(platform, os.environ["DATABASE_URL"], os.environ["MLFLOW_TRACKING_URI"])
            apply_migrations(env.db_url)
            return env
        say(f"PostgreSQL on port {platform.postgres.port}; migrating")
        db_url = platform.database()
        mlflow_uri = platform.mlflow()
        say(f"MLflow on port {mlflow_uri.rsplit(':', 1)[1]}; seeding features and training {MODEL}")
        end = platform.features(dt.date(2026, 11, 1), 30, 1500)
        # A gate refusal (e.g. its latency check on a busy machine) is overridden: the bench needs a model anyway.
        result = train_champion(load_spec(MODEL), db_url, end + dt.timedelta(days=1), force=True)
        if not result.decision.promoted:
            say(f"gate refused version {result.version} ({result.decision.reason}); aliasing it for the bench")
        return Env(platform, db_url, mlflow_uri)
    except BaseException:
        platform.close()
        raise


def start_gunicorn(env: Env, workers: int, threads: int = 1, log_name: str = "gunicorn") -> str:
    """A serving deployment (the bench's own unless `log_name` names another); returns its URL."""
    port = free_port()
    penv = {"DATABASE_URL": env.db_url, "MLFLOW_TRACKING_URI": env.mlflow_uri, "SERVING_WORKERS": str(workers),
            "SERVING_THREADS": str(threads), "SERVING_DB_POOL_MAX": str(max(4, threads + 1)),
            "SERVING_ACCESS_LOG": "", "SERVING_LOG_LEVEL": "warning"}
    url = f"http://127.0.0.1:{port}"
    if log_name == "gunicorn":
        env.serving_url = url
    log = env.root / f"{log_name}.log"
    try:
        proc = env.platform.gunicorn(MODEL, port, env=penv, log_path=log)
        wait_http(f"{url}/readyz", 120, proc, log_name)
    except ServiceError as exc:
        raise SystemExit(f"{exc}\n{log.read_text()[-2000:]}") from exc
    return url


def start_worker(env: Env, name: str, batch_size: int, lease_s: float) -> AsyncWorker:
    return env.platform.worker(MODEL, name, {
        "DATABASE_URL": env.db_url, "MLFLOW_TRACKING_URI": env.mlflow_uri, "WORKER_BATCH_SIZE": str(batch_size),
        "WORKER_LEASE_S": str(lease_s), "WORKER_IDLE_POLL_S": "1", "SERVING_BOOSTER_THREADS": "1",
        "SERVING_POLL_INTERVAL_S": "60"})


def wait_ready(workers: list[AsyncWorker], timeout: float = 120) -> None:
    for w in workers:
        try:
            w.wait_ready(timeout)
        except ServiceError as exc:
            raise SystemExit(str(exc)) from exc


# ------------------------------------------------------------------------------------------------- HTTP clients


async def _drive(url: str, bodies: list[tuple[dict[str, Any], dict[str, str]]], concurrency: int,
                 expect: set[int]) -> tuple[float, list[float], list[Any], int]:
    """POST every body with `concurrency` requests in flight; retries (same headers, so the same Idempotency-Key)
    on connection errors. Returns (elapsed, latencies, response JSONs, errors)."""
    results: list[Any] = [None] * len(bodies)
    latencies: list[float] = []
    errors = 0
    it = iter(range(len(bodies)))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one() -> None:
            nonlocal errors
            for i in it:
                body, headers = bodies[i]
                for _attempt in range(5):
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, json=body, headers=headers) as resp:
                            data = await resp.json()
                            if resp.status in expect:
                                latencies.append(time.perf_counter() - t0)
                                results[i] = data
                                break
                            errors += 1
                    except (TimeoutError, aiohttp.ClientError):
                        errors += 1
                    await asyncio.sleep(0.05)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies, results, errors


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_WRK_LUA = """
local bodies = {
%s
}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"errors": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def live_rate_wrk(wrk: str, env: Env, records: list[dict], seconds: int, connections: int) -> float:
    """The live single-row rate measured by wrk in this run: the reference every async rate is divided by.
    wrk (C) is far cheaper per request than a Python client, so any other client would understate the live rate
    and flatter the async one: without a clean wrk figure the bench stops, saying why."""
    path = f"/v1/models/{MODEL}/predict"
    bodies = ",\n".join(f"  {json.dumps(json.dumps({'records': [r]}))}" for r in records[:200])
    lua = env.root / "live.lua"
    lua.write_text(_WRK_LUA % (bodies, path))
    try:
        d = wrk_json(wrk, lua, env.serving_url + path, seconds, connections)
    except RuntimeError as exc:
        raise SystemExit(f"error: no live baseline: {exc}") from exc
    rate = d["requests"] / (d["duration_us"] / 1e6)
    say(f"live single-row (wrk, {connections} connections, {seconds}s): {d['requests']} requests = {rate:.0f} rows/s "
        f"(p50 {d['p50_us'] / 1e3:.1f} ms, p99 {d['p99_us'] / 1e3:.1f} ms, errors {d['errors']})")
    if d["errors"] or not d["requests"]:
        raise SystemExit(f"error: no live baseline: wrk's live run had {d['errors']} error(s) in {d['requests']} "
                         f"requests (see {env.root})")
    return rate


def submit(env: Env, records: list[dict], tag: str, concurrency: int, per_request: int = 1
           ) -> tuple[list[str], float]:
    """Single-row jobs, one per record."""
    return submit_jobs(env, [[r] for r in records], tag, concurrency, per_request)


def submit_jobs(env: Env, jobs: list[list[dict]], tag: str, concurrency: int, per_request: int = 1
                ) -> tuple[list[str], float]:
    """Submit every job (an Idempotency-Key each): one per request, or `per_request` per bulk request."""
    if per_request <= 1:
        url = f"{env.serving_url}/v1/models/{MODEL}/jobs"
        bodies = [({"records": recs}, {"Idempotency-Key": f"{tag}-{i}"}) for i, recs in enumerate(jobs)]
    else:
        url = f"{env.serving_url}/v1/models/{MODEL}/jobs/bulk"
        bodies = [({"jobs": [{"records": recs, "idempotency_key": f"{tag}-{start + j}"}
                             for j, recs in enumerate(jobs[start:start + per_request])]}, {})
                  for start in range(0, len(jobs), per_request)]
    elapsed, _, results, errors = asyncio.run(_drive(url, bodies, concurrency, {200, 202}))
    if per_request <= 1:
        ids = [r["id"] if r else "" for r in results]
    else:
        ids = []
        for body, r in zip(bodies, results, strict=True):
            ids.extend(j["id"] for j in r["jobs"]) if r else ids.extend([""] * len(body[0]["jobs"]))
    how = "one per request" if per_request <= 1 else f"{per_request} per bulk request"
    say(f"{tag}: submitted {sum(1 for i in ids if i)} jobs ({how}) in {elapsed:.2f}s = {len(jobs) / elapsed:.0f} "
        f"jobs/s (retried errors {errors})")
    return ids, elapsed


async def _fetch_all(base: str, ids: list[str], concurrency: int) -> list[Any]:
    out: list[Any] = [None] * len(ids)
    it = iter(range(len(ids)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one() -> None:
            for i in it:
                if ids[i]:
                    async with session.get(f"{base}/v1/jobs/{ids[i]}") as resp:
                        out[i] = await resp.json() if resp.status == 200 else None
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return out


def fetch_and_check(env: Env, ids: list[str], expected: list[list[dict]], concurrency: int) -> int:
    """The clients' side: every result fetched over HTTP equals Scorer.score of its records. Returns mismatches."""
    bodies = asyncio.run(_fetch_all(env.serving_url, ids, concurrency))
    bad = sum(1 for b, e in zip(bodies, expected, strict=True)
              if b is None or b.get("status") != "done" or b.get("predictions") != e)
    say(f"fetched {len(ids)} results over HTTP: {len(ids) - bad} equal to the scorer's, {bad} not")
    return bad


# ------------------------------------------------------------------------------- gateway job routes (scenario 6)

_WRK_JOBS_LUA = """
local bodies = {
%s
}
local n = 0
local threads = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
request = function()
  n = n + 1
  local k = tid * 100000000 + n
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json", ["Idempotency-Key"] = "%s-" .. k},
                    bodies[k %% #bodies + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "errors": %%d}\\n', summary.requests,
    summary.duration, e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def submit_wrk(wrk: str, conn: psycopg.Connection, base: str, records: list[dict], tag: str, seconds: int,
               connections: int, workdir: Path) -> tuple[list[str], list[int], int]:
    """One single-row job a request for `seconds` by wrk (C: a Python client caps the rate near 1,000 submits/s
    on these 2 cores, hiding the replicas' difference), each with its own Idempotency-Key `<tag>-<k>` and the
    record k of `records`. Returns (job ids, record index of each, requests wrk saw answered)."""
    bodies = ",\n".join(f"  {json.dumps(json.dumps({'records': [r]}))}" for r in records)
    lua = workdir / f"{tag}.lua"
    lua.write_text(_WRK_JOBS_LUA % (bodies, f"/v1/models/{MODEL}/jobs", tag))
    try:
        d = wrk_json(wrk, lua, base, seconds, connections)
    except RuntimeError as exc:
        raise SystemExit(f"error: submitting jobs: {exc}") from exc
    if d["errors"]:
        raise SystemExit(f"error: {d['errors']} of wrk's {d['requests']} job submits failed ({tag})")
    rows = conn.execute("SELECT id::text, idempotency_key FROM ops.prediction_jobs WHERE idempotency_key LIKE %s",
                        (f"{tag}-%",)).fetchall()
    return [r[0] for r in rows], [int(r[1].rsplit("-", 1)[1]) % len(records) for r in rows], d["requests"]




def gateway_jobs(env: Env, conn: psycopg.Connection, records: list[dict], expected: list[list[dict]],
                 args: argparse.Namespace, run: str, wrk: str) -> tuple[dict[str, float], int, int]:
    """One-job-a-request submits end to end through the gateway, the job routes on the sync deployment vs on a
    threaded job replica (the gateway's own layout). Returns (median jobs/s per set, lost or wrong, duplicated)."""
    from stack.config import StackConfig
    from stack.gateway import Upstreams, start_standalone
    from stack.services import stop_process

    threads = StackConfig.from_env().job_threads
    threaded = start_gunicorn(env, 1, threads, "gunicorn-jobs")
    sync = env.serving_url.removeprefix("http://")
    gateways, procs = {}, []
    try:
        for name, jobs in (("sync", []), ("threaded", [threaded.removeprefix("http://")])):
            port = free_port()
            procs.append(start_standalone({MODEL: Upstreams([sync], jobs)}, port, env.root / f"gw-{name}",
                                          env.root / f"gw-{name}.log"))
            gateways[name] = f"http://127.0.0.1:{port}"
        rates: dict[str, list[float]] = {"sync": [], "threaded": []}
        bad = duplicated = 0
        for rnd in range(args.gateway_rounds):
            for name, url in gateways.items():
                tag = f"bench-{run}-gw-{name}-{rnd}"
                queue_empty(conn)
                workers = [start_worker(env, f"{tag}-w{i}", args.batch_size, 30) for i in range(2)]
                wait_ready(workers)
                ids, index, answered = submit_wrk(wrk, conn, url, records, tag, args.gateway_seconds,
                                                   args.concurrency, env.root)
                wait_done(conn, ids, 600)
                for w in workers:
                    w.stop()
                res = check(conn, tag, ids, [expected[i] for i in index])
                bad += res.lost + res.wrong + max(0, answered - len(ids))  # answered by wrk, yet no job
                duplicated += res.duplicated
                rates[name].append(len(ids) / res.e2e_s)
                say(f"gateway jobs ({name} replicas{f', {threads} threads' if name == 'threaded' else ''}), round "
                    f"{rnd + 1}: {len(ids) / res.e2e_s:.0f} jobs/s end to end; lost {res.lost}, duplicated "
                    f"{res.duplicated}, wrong {res.wrong}")
        return {name: statistics.median(r) for name, r in rates.items()}, bad, duplicated
    finally:
        for proc in procs:
            stop_process(proc)


# ---------------------------------------------------------------------------------------------------- checks


@dataclass
class PhaseResult:
    lost: int
    duplicated: int
    wrong: int
    drain_s: float
    e2e_s: float
    max_latency_s: float
    retried: int
    p99_latency_s: float = math.nan


def wait_done(conn: psycopg.Connection, ids: list[str], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE id = ANY(%s::uuid[]) AND status <> 'queued' "
                         "AND status <> 'running'", (ids,)).fetchone()[0]
        if n == len(ids):
            return
        time.sleep(0.05)
    say(f"timeout: {n} of {len(ids)} finished")


def check(conn: psycopg.Connection, tag: str, ids: list[str], expected: list[list[dict]]) -> PhaseResult:
    rows = conn.execute(
        "SELECT id::text, status, result, result_writes, attempts, created_at, started_at, finished_at "
        "FROM ops.prediction_jobs WHERE id = ANY(%s::uuid[])", ([i for i in ids if i],)).fetchall()
    by_id = {r[0]: r for r in rows}
    lost = wrong = retried = 0
    for i, job_id in enumerate(ids):
        row = by_id.get(job_id)
        if row is None or row[1] != "done":
            lost += 1
        elif row[2] != expected[i]:
            wrong += 1
        if row is not None and row[4] > 1:
            retried += 1
    rewrites = sum(max(r[3] - 1, 0) for r in rows)
    extra_rows = conn.execute("SELECT count(*) - count(DISTINCT idempotency_key) FROM ops.prediction_jobs "
                              "WHERE idempotency_key LIKE %s", (f"{tag}-%",)).fetchone()[0]
    done = [r for r in rows if r[1] == "done"]
    drain = (max(r[7] for r in done) - min(r[6] for r in done)).total_seconds() if done else math.nan
    e2e = (max(r[7] for r in done) - min(r[5] for r in done)).total_seconds() if done else math.nan
    latencies = [(r[7] - r[5]).total_seconds() for r in done]
    max_lat = max(latencies) if done else math.nan
    return PhaseResult(lost, rewrites + extra_rows, wrong, drain, e2e, max_lat, retried, pct(latencies, .99))


def queue_empty(conn: psycopg.Connection) -> None:
    left = conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE status IN ('queued', 'running')").fetchone()[0]
    if left:
        raise SystemExit(f"{left} unfinished jobs left from a previous phase")


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=BenchSettings.from_env().jobs)
    parser.add_argument("--concurrency", type=int, default=32, help="client connections (submits and live)")
    parser.add_argument("--bulk-jobs", type=int, default=32, help="jobs per bulk request in the headline phase")
    parser.add_argument("--wrk-seconds", type=int, default=15, help="seconds of the wrk live-rate run")
    parser.add_argument("--batch-size", type=int, default=256, help="WORKER_BATCH_SIZE")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--serving-threads", type=int, default=1,
                        help="SERVING_THREADS: 1 = sync workers (deployed); >1 = gthread (group commit groups)")
    parser.add_argument("--kill-lease-s", type=float, default=3.0)
    parser.add_argument("--skip-gateway-jobs", action="store_true", help="leave out scenario 6 (gateway job routes)")
    parser.add_argument("--gateway-rounds", type=int, default=3, help="scenario 6: alternated rounds per replica set")
    parser.add_argument("--gateway-seconds", type=int, default=5, help="scenario 6: seconds of wrk submits per run")
    parser.add_argument("--durable", action=argparse.BooleanOptionalAction, default=True,
                        help="own PostgreSQL with fsync and synchronous_commit on, as `make up` runs it (default)")
    parser.add_argument("--use-env", action="store_true",
                        help="use DATABASE_URL / MLFLOW_TRACKING_URI (migrated, churn@champion), not own services")
    args = parser.parse_args(argv)
    k = args.jobs
    c = args.concurrency

    wrk = ensure_wrk()  # before anything starts: the live baseline is wrk's, measured in this run
    env = start_stack(args)
    workers: list[AsyncWorker] = []
    try:
        start_gunicorn(env, args.gunicorn_workers, args.serving_threads)
        spec = load_spec(MODEL)
        frame = generate_day(dt.date(2026, 11, 5), k, seed=99)[spec.feature_names]
        records = [{col: (None if isinstance(v, float) and math.isnan(v) else v) for col, v in rec.items()}
                   for rec in frame.to_dict(orient="records")]
        scored = Scorer.from_registry(spec, "champion").score(records).records()
        single = [[row] for row in scored]
        say(f"gunicorn ({args.gunicorn_workers} workers x {args.serving_threads} thread(s)) at {env.serving_url}; "
            f"{k} single-row jobs per phase; load average {os.getloadavg()[0]:.1f}")

        live = live_rate_wrk(wrk, env, records, args.wrk_seconds, 32)
        conn = psycopg.connect(env.db_url, autocommit=True)
        results: dict[str, PhaseResult] = {}
        bad_fetches = 0
        run = time.strftime("%H%M%S")

        for n_workers in (1, 2):
            tag = f"bench-{run}-drain{n_workers}"
            queue_empty(conn)
            ids, _ = submit(env, records, tag, c, args.bulk_jobs)
            workers = [start_worker(env, f"{tag}-w{i}", args.batch_size, 30) for i in range(n_workers)]
            wait_ready(workers)
            wait_done(conn, ids, 600)
            codes = [w.stop() for w in workers]
            res = results[tag] = check(conn, tag, ids, single)
            say(f"drain with {n_workers} worker(s): {k} jobs in {res.drain_s:.2f}s = {k / res.drain_s:.0f} jobs/s; "
                f"lost {res.lost}, duplicated {res.duplicated}, wrong {res.wrong}; SIGTERM exit codes {codes}")

        tag = f"bench-{run}-kill"
        queue_empty(conn)
        ids, _ = submit(env, records, tag, c, args.bulk_jobs)
        workers = [start_worker(env, f"{tag}-w{i}", args.batch_size, args.kill_lease_s) for i in range(2)]
        wait_ready(workers)
        victim = workers[0]
        # Kill once >= 30% is done, at a moment the victim holds leased jobs (mid-batch), so some must be reclaimed.
        while True:
            done, holding = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'running' AND "
                "worker_id = %s) FROM ops.prediction_jobs WHERE id = ANY(%s::uuid[])",
                (victim.worker_id, ids)).fetchone()
            if (done >= 0.3 * k and holding) or done == k:
                break
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        held = conn.execute("SELECT count(*) FROM ops.prediction_jobs WHERE status = 'running' AND worker_id = %s",
                            (victim.worker_id,)).fetchone()[0]
        say(f"kill: SIGKILLed worker {victim.worker_id} at >=30% done, holding {held} leased job(s)")
        wait_done(conn, ids, 600)
        workers[1].stop()
        victim.log.close()
        res = results[tag] = check(conn, tag, ids, single)
        lease_note = (f"incl. the {args.kill_lease_s:.0f}s lease" if held else
                      "the kill landed between batches: no lease to reclaim (use more jobs)")
        say(f"kill run: {k} jobs drained in {res.drain_s:.2f}s ({lease_note}); "
            f"{res.retried} job(s) re-run after reclaim; lost {res.lost}, duplicated {res.duplicated}, "
            f"wrong {res.wrong}")

        # Steady phases: workers running while the clients submit; results fetched over HTTP and checked.
        k100 = max(1, k // 10)
        frame100 = generate_day(dt.date(2026, 11, 6), k100 * 100, seed=7)[spec.feature_names]
        recs100 = [{col: (None if isinstance(v, float) and math.isnan(v) else v) for col, v in rec.items()}
                   for rec in frame100.to_dict(orient="records")]
        scored100 = Scorer.from_registry(spec, "champion").score(recs100).records()
        jobs100 = [recs100[i * 100:(i + 1) * 100] for i in range(k100)]
        expected100 = [scored100[i * 100:(i + 1) * 100] for i in range(k100)]
        steady = {}
        for name, jobs, expected, per_request in (
                ("steady-bulk", [[r] for r in records], single, args.bulk_jobs),
                ("steady-single", [[r] for r in records], single, 1),
                ("steady-100", jobs100, expected100, 1)):
            tag = f"bench-{run}-{name}"
            queue_empty(conn)
            workers = [start_worker(env, f"{tag}-w{i}", args.batch_size, 30) for i in range(2)]
            wait_ready(workers)
            ids, submit_s = submit_jobs(env, jobs, tag, c, per_request)
            wait_done(conn, ids, 600)
            for w in workers:
                w.stop()
            res = steady[name] = results[tag] = check(conn, tag, ids, expected)
            bad_fetches += fetch_and_check(env, ids, expected, c)
            n_rows = sum(len(j) for j in jobs)
            say(f"{name}: {len(jobs)} jobs ({n_rows} rows) end-to-end in {res.e2e_s:.2f}s = "
                f"{len(jobs) / res.e2e_s:.0f} jobs/s, {n_rows / res.e2e_s:.0f} rows/s (submitting took "
                f"{submit_s:.2f}s); latency submit -> result p99 {res.p99_latency_s:.3f}s, max "
                f"{res.max_latency_s:.3f}s; lost {res.lost}, duplicated {res.duplicated}, wrong {res.wrong}")

        drain2 = results[f"bench-{run}-drain2"]
        drain_rate = k / drain2.drain_s
        e2e = k / steady["steady-bulk"].e2e_s
        e2e_single = k / steady["steady-single"].e2e_s
        rows100 = k100 * 100 / steady["steady-100"].e2e_s
        max_lat = max(r.max_latency_s for r in steady.values())
        p99 = max(steady["steady-bulk"].p99_latency_s, steady["steady-100"].p99_latency_s)
        lost = sum(r.lost + r.wrong for r in results.values()) + bad_fetches
        duplicated = sum(r.duplicated for r in results.values())
        print()
        print(f"{'phase':<22} {'jobs/s':>9} {'rows/s':>9} {'x live single-row':>18}")
        for label, jobs_s, rows_s in (("live single-row", live, live),
                                      ("drain, 2 workers", drain_rate, drain_rate),
                                      (f"e2e bulk ({args.bulk_jobs}/request)", e2e, e2e),
                                      ("e2e one job/request", e2e_single, e2e_single),
                                      ("e2e 100-record jobs", rows100 / 100, rows100)):
            print(f"{label:<22} {jobs_s:>9.0f} {rows_s:>9.0f} {rows_s / live:>17.2f}x")
        ok = (e2e >= live and rows100 >= 10 * live and p99 <= 1.0 and lost == 0 and duplicated == 0)
        say(f"targets (e2e single-row >= 1.0x live, 100-record rows/s >= 10x live, p99 submit->result <= 1 s, "
            f"0 lost, 0 duplicated): {'meets' if ok else 'MISSES'} (p99 {p99:.3f}s)")
        if not args.skip_gateway_jobs:
            gw, gw_lost, gw_duplicated = gateway_jobs(env, conn, records, single, args, run, wrk)
            lost += gw_lost
            duplicated += gw_duplicated
            print(f"gateway job routes, one job per request end to end (median of {args.gateway_rounds}): sync "
                  f"replicas {gw['sync']:.0f} jobs/s, threaded job replica {gw['threaded']:.0f} jobs/s = "
                  f"{gw['threaded'] / gw['sync']:.2f}x (target >= 1.5x: "
                  f"{'met' if gw['threaded'] >= 1.5 * gw['sync'] else 'MISSED'})")
        print(f"async e2e_jobs_per_s={e2e:.0f} e2e_vs_live_single_row={e2e / live:.2f}x "
              f"e2e_rows_per_s_100={rows100:.0f} drain_jobs_per_s={drain_rate:.0f} max_latency_s={max_lat:.2f} "
              f"lost={lost} duplicated={duplicated}",
              flush=True)
        return 0
    finally:
        env.platform.close()  # kills the workers still running, stops gunicorn and MLflow, removes PostgreSQL


if __name__ == "__main__":
    sys.exit(main())
