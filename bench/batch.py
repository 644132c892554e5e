"""Batch scoring benchmark (`make bench-batch`, `--rows` default 1,000,000): the platform's batch path against
the usual script and a minimal hand-written pipeline, side by side in one run.

It starts its own PostgreSQL cluster (testing/platform.py; unless DATABASE_URL is given), a file-backed MLflow
registry with a freshly trained churn model aliased `champion`, writes N feature rows for one day, then times,
each in a fresh process (so that peak RSS is per pipeline; model loading and imports are not timed):

1. naive:     pandas.read_sql -> XGBClassifier.predict_proba -> DataFrame.to_sql (SQLAlchemy), on at most
              --naive-rows rows (it needs ~2.7 GB per million rows); compared by rows/s;
2. reference: binary COPY out (psycopg) -> Booster.inplace_predict -> binary COPY in, no validation, no staging,
              no bookkeeping, written here in ~40 lines;
3. platform:  scoring.batch.run_batch, the code the predict DAG's tasks call: feature check, staging table,
              validation + rejects, shared Scorer, atomic partition swap, ops.batch_runs bookkeeping;
4. sharded:   the same platform steps with 2 shards scored by 2 processes at once (as 2 Airflow workers would);
5. reasons:   the platform row with the default nightly reasons on (models.yaml `batch.explain: {}`: exact
              top-3 contributions of the day's 1,000 highest scores), into the reasons table in the same swap;
6. reasons-all (--explain-all, once): exact reasons for EVERY row, timed on one shard of ~100,000 rows
              scored by one single-threaded worker (the per-worker rate of the scaling-out table); not swapped.

The pipelines 2-4 run the churn spec with batch.explain off, whatever models.yaml says, so that their figures
stay comparable with earlier runs; 5 and 6 differ from 3 only in it.

Each pipeline runs --repeats times (default 3; naive --naive-repeats, default 1: it is slow and only a far
floor), round-robin so that a change in machine load hits every pipeline alike; the table shows the median
rows/s with the spread (min-max) and the peak RSS over all runs; ratios are of medians.
Every pipeline's output is checked: one row per entity, and the platform's scores equal the reference's.
Last line: `batch rows=N platform_rows_per_s=X vs_naive=Yx vs_reference=Zx peak_rss_mb=W` (medians; W the max).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scoring.spec import ModelSpec, load_spec  # noqa: E402

MODEL = "churn"
DAY = dt.date(2026, 11, 1)
EXPLAIN_SHARD_ROWS = 100_000  # rows of the one shard --explain-all times
GEN_SLICE = 500_000  # feature rows generated and written per step (keeps the bench's own memory small)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_mb() -> float:
    """This process's peak RSS. Not RUSAGE_CHILDREN: a forked child (psql, and `uname`/`file` that MLflow runs at
    import) reports the parent's pages at fork time, not its own use; psql itself streams in a few MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------- setup

def write_features(url: str, rows: int) -> None:
    """N demo feature rows for DAY, generated and COPYed in slices (customer ids 1..N)."""
    from scoring.demo_data import COLUMNS, TABLE, generate_day
    from scoring.store import ensure_day_partition

    with psycopg.connect(url) as conn:
        with conn.transaction():
            part = ensure_day_partition(conn, TABLE, DAY)
            conn.execute(sql.SQL("TRUNCATE {}").format(part))
        for start in range(0, rows, GEN_SLICE):
            n = min(GEN_SLICE, rows - start)
            frame = generate_day(DAY, n, seed=11 + start // GEN_SLICE)
            frame["customer_id"] += start
            buf = io.StringIO()
            frame.to_csv(buf, index=False, header=False)
            with conn.transaction(), conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                    part, sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))) as copy:
                copy.write(buf.getvalue())
        conn.execute(sql.SQL("ANALYZE {}").format(part))
        conn.commit()


def train_champion(spec: ModelSpec, artifacts: Path) -> str:
    """A churn model trained on demo history, logged with the xgboost flavour and aliased champion."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from scoring.demo_data import generate_day
    from scoring.encoding import encode
    from scoring.training import fit

    frame = pd.concat([generate_day(DAY - dt.timedelta(days=d), 20_000) for d in range(1, 4)])
    data = pd.DataFrame(encode(spec, frame[spec.feature_names]).matrix.astype(np.float64),
                        columns=spec.feature_names)
    data[spec.label] = frame[spec.label].to_numpy()
    model = fit(spec, data)
    experiment = mlflow.create_experiment("bench-batch", artifact_location=artifacts.as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.xgboost.log_model(model, name="model", registered_model_name=spec.name,
                                        input_example=data[spec.feature_names].head(3))
    MlflowClient().set_registered_model_alias(spec.name, "champion", info.registered_model_version)
    return str(info.registered_model_version)


# ---------------------------------------------------------------------------------------------------- pipelines

def naive(url: str, spec: ModelSpec, rows: int) -> dict[str, Any]:
    """What people usually write first."""
    import mlflow.xgboost
    import pandas as pd
    from sqlalchemy import create_engine

    model = mlflow.xgboost.load_model(f"models:/{spec.name}@champion")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    started = time.perf_counter()
    frame = pd.read_sql(f"SELECT * FROM {spec.source.table} WHERE snapshot_date = '{DAY}' AND customer_id <= {rows}",
                        engine)
    x = pd.DataFrame({f.name: (frame[f.name].map({c: i for i, c in enumerate(f.categories)}) if f.categories
                               else frame[f.name]).astype(float) for f in spec.features})
    scores = model.predict_proba(x)[:, 1]
    out = pd.DataFrame({"prediction_date": DAY, "customer_id": frame["customer_id"], "score": scores,
                        "label": (scores > 0.5).astype(int), "model_name": spec.name, "model_version": 1,
                        "run_id": "naive", "scored_at": pd.Timestamp.now(tz="UTC")})
    out.to_sql("churn_naive", engine, schema="predictions", if_exists="replace", index=False, chunksize=10_000)
    seconds = time.perf_counter() - started
    return {"rows": len(out), "seconds": seconds}


def reference(url: str, spec: ModelSpec, rows: int) -> dict[str, Any]:
    """Binary COPY out -> inplace_predict -> binary COPY in, nothing else (no validation, staging, bookkeeping)."""
    from scoring import batch, batch_sql
    from scoring.pgcopy import HEADER, TRAILER, prediction_rows, read_fixed_rows
    from scoring.registry import load_booster, resolve_version

    booster = load_booster(spec.name, resolve_version(spec.name))
    with psycopg.connect(url) as conn, psycopg.connect(url) as out:
        types = batch.source_column_types(conn, spec)
        query = batch_sql.feature_copy_sql(spec, types, DAY)
        out.execute("DROP TABLE IF EXISTS predictions.churn_ref")
        out.execute(sql.SQL("CREATE TABLE predictions.churn_ref (LIKE predictions.churn)"))
        out.execute(sql.SQL("ALTER TABLE predictions.churn_ref ALTER prediction_date SET DEFAULT {}, ALTER "
                            "model_name SET DEFAULT 'churn', ALTER model_version SET DEFAULT 1, ALTER run_id SET "
                            "DEFAULT 'reference', ALTER scored_at SET DEFAULT now()").format(sql.Literal(DAY)))
        out.commit()
        conn.commit()
        started = time.perf_counter()
        n = 0
        with conn.cursor().copy(query) as source, out.cursor().copy(
                "COPY predictions.churn_ref (customer_id, score, label) FROM STDIN (FORMAT binary)") as sink:
            sink.write(HEADER)
            for block in read_fixed_rows(source, len(spec.features), spec.batch.chunk_rows):
                matrix = np.empty((len(block), len(spec.features)), dtype=np.float32)
                for j in range(len(spec.features)):
                    matrix[:, j] = block[f"v{j}"]
                scores = booster.inplace_predict(matrix, validate_features=False)
                sink.write(prediction_rows(block["key"], scores, (scores > 0.5).astype(np.int8)))
                n += len(block)
            sink.write(TRAILER)
        out.commit()
        seconds = time.perf_counter() - started
    return {"rows": n, "seconds": seconds}


def platform(url: str, spec: ModelSpec, rows: int) -> dict[str, Any]:
    """The exact path of the predict DAG's tasks, run in one process with one shard."""
    from scoring import batch
    from scoring.scorer import Scorer

    scorer = Scorer.from_registry(spec, "champion")
    started = time.perf_counter()
    result = batch.run_batch(spec, DAY, f"bench_{int(time.time())}", url=url, scorer=scorer, shards=1)
    seconds = time.perf_counter() - started
    return {"rows": result.rows_scored, "rejected": result.rows_rejected, "seconds": seconds}


def sharded(url: str, spec: ModelSpec, rows: int, shards: int = 2) -> dict[str, Any]:
    """prepare -> `shards` worker processes score one shard each at the same time -> swap.

    Workers start, import and load the model first (an Airflow worker's start-up), then wait for the plan; the
    clock runs from prepare to the end of the swap."""
    from scoring import batch
    from scoring.registry import resolve_version

    version = resolve_version(spec.name)
    workers = [subprocess.Popen([sys.executable, __file__, "--child", "shard-worker", "--url", url, "--shard",
                                 str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for i in range(shards)]
    for w in workers:
        assert w.stdout.readline().strip() == "ready"
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        batch.check_features(conn, spec, DAY)
        plan = batch.prepare(conn, spec, DAY, f"bench_sharded_{int(time.time())}", version, shards)
        for w in workers:
            w.stdin.write(json.dumps(plan.to_dict()) + "\n")
            w.stdin.flush()
        results = [json.loads(w.stdout.readline()) for w in workers]
        result = batch.swap(conn, spec, plan)
        seconds = time.perf_counter() - started
    for w in workers:
        w.wait(30)
    return {"rows": result.rows_scored, "seconds": seconds,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "shard_seconds": [round(r["seconds"], 2) for r in results]}


def shard_worker(url: str, spec: ModelSpec, shard: int) -> None:
    from scoring import batch
    from scoring.scorer import Scorer

    scorer = Scorer.from_registry(spec, "champion", threads=1)  # 2 processes on 2 cores: one thread each
    with psycopg.connect(url) as read_conn, psycopg.connect(url) as write_conn:
        print("ready", flush=True)
        plan = batch.BatchPlan.from_dict(json.loads(sys.stdin.readline()))
        started = time.perf_counter()
        result = batch.score_shard(read_conn, write_conn, scorer, plan, shard)
    print(json.dumps({"rows": result.rows_scored, "seconds": time.perf_counter() - started,
                      "peak_rss_mb": peak_rss_mb()}), flush=True)


def reasons(url: str, spec: ModelSpec, rows: int) -> dict[str, Any]:
    """The platform row with the default reasons (ExplainConfig()): the cost of explaining the top scores."""
    from scoring.spec import ExplainConfig

    result = platform(url, with_explain(spec, ExplainConfig()), rows)
    with psycopg.connect(url) as conn:
        result["reason_rows"] = conn.execute("SELECT count(*) FROM predictions.churn_reasons WHERE "
                                             "prediction_date = %s", (DAY,)).fetchone()[0]
    return result


def reasons_all(url: str, spec: ModelSpec, rows: int, per_shard: int = EXPLAIN_SHARD_ROWS) -> dict[str, Any]:
    """Exact reasons for every row of one shard of ~per_shard rows, one worker with one thread; the run is then
    failed (nothing swapped): the per-worker rate of explaining everything."""
    from scoring import batch
    from scoring.scorer import Scorer
    from scoring.spec import EXPLAIN_ALL, ExplainConfig

    explained = with_explain(spec, ExplainConfig(rows=EXPLAIN_ALL))
    shards = max(1, rows // per_shard)
    scorer = Scorer.from_registry(explained, "champion", threads=1)
    with psycopg.connect(url) as conn, psycopg.connect(url) as read_conn:
        plan = batch.prepare(conn, explained, DAY, f"bench_reasons_all_{int(time.time())}", scorer.version, shards)
        started = time.perf_counter()
        result = batch.score_shard(read_conn, conn, scorer, plan, 0)
        seconds = time.perf_counter() - started
        batch.fail_run(conn, plan, "bench: timed one shard only")
    return {"rows": result.rows_scored, "seconds": seconds, "shards": shards}


def with_explain(spec: ModelSpec, explain: Any) -> ModelSpec:
    return dataclasses.replace(spec, batch=dataclasses.replace(spec.batch, explain=explain))


PIPELINES = {"naive": naive, "reference": reference, "platform": platform, "sharded": sharded, "reasons": reasons,
             "reasons-all": reasons_all}


def child(args: argparse.Namespace) -> int:
    spec = with_explain(load_spec(MODEL), None)  # the rows without reasons; `reasons*` switch them on
    if args.child == "shard-worker":
        shard_worker(args.url, spec, args.shard)
        return 0
    result = PIPELINES[args.child](args.url, spec, args.rows)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_child(name: str, url: str, rows: int) -> dict[str, Any]:
    say(f"{name}: running ...")
    out = subprocess.run([sys.executable, __file__, "--child", name, "--url", url, "--rows", str(rows)],
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    say(f"{name}: {result['rows']:,} rows in {result['seconds']:.2f}s = {result['rows_per_s']:,.0f} rows/s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run (by rows/s) with the spread over all runs and the highest peak RSS."""
    ordered = sorted(runs, key=lambda r: r["rows_per_s"])
    median = dict(ordered[len(ordered) // 2])
    if len(ordered) % 2 == 0:  # an even count: the mean of the middle two rates
        median["rows_per_s"] = (ordered[len(ordered) // 2 - 1]["rows_per_s"] + median["rows_per_s"]) / 2
        median["seconds"] = median["rows"] / median["rows_per_s"]
    lo, hi = ordered[0]["rows_per_s"], ordered[-1]["rows_per_s"]
    median.update(runs=len(runs), min_rows_per_s=lo, max_rows_per_s=hi,
                  spread_pct=100 * (hi - lo) / 2 / median["rows_per_s"],
                  peak_rss_mb=max(r["peak_rss_mb"] for r in runs))
    return median


# ---------------------------------------------------------------------------------------------------- checks

def check_outputs(url: str, rows: int, naive_rows: int) -> None:
    """One row per entity everywhere; the platform stores exactly the reference's scores."""
    with psycopg.connect(url) as conn:
        counts = {t: conn.execute(sql.SQL("SELECT count(*), count(DISTINCT customer_id) FROM {}").format(
            sql.SQL(t))).fetchone() for t in ("predictions.churn", "predictions.churn_ref")}
        if naive_rows:
            counts["predictions.churn_naive"] = conn.execute(
                "SELECT count(*), count(DISTINCT customer_id) FROM predictions.churn_naive").fetchone()
        differ = conn.execute("SELECT count(*) FROM predictions.churn p JOIN predictions.churn_ref r "
                              "USING (customer_id) WHERE p.score <> r.score OR p.label <> r.label").fetchone()[0]
        success = conn.execute("SELECT count(*) FROM ops.batch_runs WHERE status = 'success'").fetchone()[0]
    expect = {"predictions.churn": rows, "predictions.churn_ref": rows, "predictions.churn_naive": naive_rows}
    for table, (n, distinct) in counts.items():
        if n != expect[table] or distinct != n:
            raise SystemExit(f"check failed: {table} has {n} rows ({distinct} distinct), expected {expect[table]}")
    if differ:
        raise SystemExit(f"check failed: {differ} platform scores differ from the reference's")
    say(f"checks: one row per entity in every output; platform == reference scores; {success} successful runs")


# ---------------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--naive-rows", type=int, default=1_000_000,
                        help="rows the naive script scores (at most --rows; 0 skips it)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline (medians reported)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="runs of the (slow) naive script")
    parser.add_argument("--explain-all", action="store_true",
                        help=f"also time exact reasons for every row, on one shard of ~{EXPLAIN_SHARD_ROWS:,} rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from scoring.migrate import apply_migrations
    from testing.platform import Platform

    platform = Platform("bench-batch-", databases=("bench",))  # its PostgreSQL starts only without DATABASE_URL
    root = platform.root
    try:
        url = os.environ.get("DATABASE_URL") or platform.database("bench")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
        spec = load_spec(MODEL)
        naive_rows = min(args.naive_rows, args.rows)
        apply_migrations(url)
        say(f"PostgreSQL at {url}; writing {args.rows:,} feature rows for {DAY} ...")
        write_features(url, args.rows)
        say("training and registering the champion churn model ...")
        version = train_champion(spec, root / "artifacts")
        say(f"champion is version {version}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
        runs: dict[str, list[dict[str, Any]]] = {}
        if naive_rows:
            for _ in range(args.naive_repeats):
                runs.setdefault("naive", []).append(run_child("naive", url, naive_rows))
        for _ in range(args.repeats):
            for name in ("reference", "platform", "reasons", "sharded"):
                runs.setdefault(name, []).append(run_child(name, url, args.rows))
        if args.explain_all:
            runs["reasons-all"] = [run_child("reasons-all", url, args.rows)]
        check_outputs(url, args.rows, naive_rows)
        results = {name: summarise(r) for name, r in runs.items()}
    finally:
        platform.close()

    plat = results["platform"]
    print()
    print(f"{'pipeline':<12} {'rows':>10} {'runs':>5} {'median s':>9} {'median rows/s':>14} {'spread rows/s':>21} "
          f"{'peak RSS MB':>12} {'platform speed-up':>18}")
    for name, r in results.items():
        ratio = plat["rows_per_s"] / r["rows_per_s"]
        spread = f"{r['min_rows_per_s']:,.0f}-{r['max_rows_per_s']:,.0f} (±{r['spread_pct']:.0f}%)"
        print(f"{name:<12} {r['rows']:>10,} {r['runs']:>5} {r['seconds']:>9.2f} {r['rows_per_s']:>14,.0f} "
              f"{spread:>21} {r['peak_rss_mb']:>12.0f} {ratio:>17.2f}x")
    sh = results["sharded"]
    print(f"sharded (2 processes) vs reference: {sh['rows_per_s'] / results['reference']['rows_per_s']:.2f}x, "
          f"vs platform single process: {sh['rows_per_s'] / plat['rows_per_s']:.2f}x "
          f"(shard times of the median run {sh['shard_seconds']} s)")
    why = results["reasons"]
    print(f"reasons (default: exact top-3 of the {why['reason_rows'] // 3:,} highest scores) vs platform without: "
          f"{why['rows_per_s'] / plat['rows_per_s']:.2f}x (target >= 0.5x), peak RSS {why['peak_rss_mb']:.0f} MB")
    if "reasons-all" in results:
        every = results["reasons-all"]
        print(f"reasons for every row (exact): {every['rows_per_s']:,.0f} rows/s per single-threaded worker "
              f"(one shard of {every['rows']:,}); {args.rows:,} rows = {args.rows / every['rows_per_s'] / 60:.1f} "
              f"worker-minutes")
    vs_naive = f"{plat['rows_per_s'] / results['naive']['rows_per_s']:.1f}x" if "naive" in results else "n/a"
    print(f"batch rows={args.rows} platform_rows_per_s={plat['rows_per_s']:.0f} vs_naive={vs_naive} "
          f"vs_reference={plat['rows_per_s'] / results['reference']['rows_per_s']:.2f}x "
          f"peak_rss_mb={plat['peak_rss_mb']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
