"""The nightly swap against readers and other runs, on a real PostgreSQL: an analyst's long read never stalls
lookups (the swap retries short lock waits until the reader ends, or fails at its deadline with the old day
kept); two runs of one (model, date) cannot swap each other's table; a failed swap can be retried; a serving
query stuck behind a lock answers quickly (StoreUnavailable: 503) instead of hanging.

Runs use a model of their own ("churn_swaplocks", its own prediction table, the churn champion's booster), so
nothing here touches the tables other test files read."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time

import pandas as pd
import pytest
from psycopg import sql

from scoring import batch
from scoring.db import connect
from scoring.scorer import Scorer
from scoring.store import ensure_prediction_table
from serving.database import ServingDatabase
from serving.failures import StoreUnavailable

TABLE = "predictions.swap_locks_test"
ANALYST_QUERY = f"SELECT count(*) FROM {TABLE}"


@pytest.fixture(scope="module")
def spec(specs, db_url, trained_models):
    own = dataclasses.replace(specs["churn"], name="churn_swaplocks", prediction_table=TABLE)
    with connect(db_url) as conn:
        ensure_prediction_table(conn, own)
        conn.commit()
    yield own
    with connect(db_url) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE} CASCADE")
        for (stage,) in conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'swap\\_locks\\_test\\_stage%'"
                                     ).fetchall():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("predictions", stage)))
        conn.execute("DELETE FROM ops.batch_runs WHERE model_name = %s", (own.name,))
        conn.execute("DELETE FROM ops.prediction_rejects WHERE model_name = %s", (own.name,))
        conn.commit()


@pytest.fixture(scope="module")
def scorer(spec, specs):
    return dataclasses.replace(Scorer.from_registry(specs["churn"], "champion"), spec=spec)


def stored_runs(db_url: str, day: dt.date) -> pd.Series:
    with connect(db_url) as conn:
        rows = conn.execute(f"SELECT run_id FROM {TABLE} WHERE prediction_date = %s", (day,)).fetchall()
    return pd.Series([r[0] for r in rows], dtype=object)


def run_rows(db_url: str, spec, day: dt.date) -> dict[str, tuple[str, str | None]]:
    with connect(db_url) as conn:
        rows = conn.execute("SELECT run_id, status, error FROM ops.batch_runs WHERE model_name = %s "
                            "AND prediction_date = %s ORDER BY id", (spec.name, day)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def staging_left(db_url: str) -> list[str]:
    with connect(db_url) as conn:
        return [r[0] for r in conn.execute("SELECT relname FROM pg_class "
                                           "WHERE relname LIKE 'swap\\_locks\\_test\\_stage%'").fetchall()]


def test_two_runs_of_one_date_cannot_swap_each_others_table(spec, scorer, db_url, demo_features):
    day = demo_features - dt.timedelta(days=11)
    with connect(db_url) as a, connect(db_url) as a_read, connect(db_url) as b, connect(db_url) as b_read:
        plan_a = batch.prepare(a, spec, day, "run_a", scorer.version, shards=1)
        batch.score_shard(a_read, a, scorer, plan_a, 0)
        plan_b = batch.prepare(b, spec, day, "run_b", scorer.version, shards=1)  # e.g. the CLI beside the DAG
        assert plan_a.staging_table != plan_b.staging_table
        assert plan_b.staging_table.endswith(f"_stage_p{day:%Y%m%d}_r{plan_b.batch_run_id}")
        batch.score_shard(b_read, b, scorer, plan_b, 0)
        with pytest.raises(batch.SupersededError, match="run run_a was superseded by run run_b"):
            batch.swap_or_fail(a, spec, plan_a)
        assert stored_runs(db_url, day).empty  # run_a swapped nothing in
        result = batch.swap_or_fail(b, spec, plan_b)
    assert result.rows_scored == 2_000 and set(stored_runs(db_url, day)) == {"run_b"}
    runs = run_rows(db_url, spec, day)
    assert runs["run_a"][0] == "failed" and "superseded" in runs["run_a"][1]
    assert runs["run_b"] == ("success", None)
    assert not staging_left(db_url)


def test_swap_behind_a_reader_fails_at_its_deadline_with_the_old_day_kept_then_a_retry_swaps(
        spec, scorer, db_url, demo_features):
    day = demo_features - dt.timedelta(days=12)
    batch.run_batch(spec, day, "old_day", scorer=scorer)
    with connect(db_url) as analyst, connect(db_url) as conn, connect(db_url) as read_conn:
        analyst.execute(ANALYST_QUERY)  # an open transaction holding its read lock, as psql's BEGIN; SELECT does
        plan = batch.prepare(conn, spec, day, "new_day", scorer.version, shards=1)
        batch.score_shard(read_conn, conn, scorer, plan, 0)
        started = time.monotonic()
        with pytest.raises(batch.LockDeadlineError, match=r"within 1s .* held by: pid \d+ .*SELECT count"):
            batch.swap_or_fail(conn, spec, plan, batch.LockPolicy(lock_timeout_ms=50, deadline_s=1.0))
        assert time.monotonic() - started < 5
        assert set(stored_runs(db_url, day)) == {"old_day"}  # the old day is intact
        status, error = run_rows(db_url, spec, day)["new_day"]
        assert status == "failed" and "BATCH_SWAP_DEADLINE_S" in error
        analyst.rollback()  # the reader ends
        # the same plan swapped again (an Airflow retry of the swap task): no "already exists"
        result = batch.swap_or_fail(conn, spec, plan, batch.LockPolicy(lock_timeout_ms=50, deadline_s=30))
    assert result.rows_scored == 2_000 and set(stored_runs(db_url, day)) == {"new_day"}
    assert run_rows(db_url, spec, day)["new_day"] == ("success", None)
    assert not staging_left(db_url)


def test_lookups_do_not_stall_while_a_rerun_swaps_behind_an_analysts_long_read(spec, scorer, db_url,
                                                                                 demo_features):
    """The issue's scenario: `BEGIN; SELECT count(*) FROM <predictions>; SELECT pg_sleep(N)` open while a re-run
    swaps. Lookups keep answering (worst latency measured); the swap completes once the reader ends."""
    day = demo_features - dt.timedelta(days=13)
    batch.run_batch(spec, day, "before", scorer=scorer)
    store = ServingDatabase(spec, db_url, max_size=2, statement_timeout_ms=2000, lock_timeout_ms=1000).open()
    store.pool.wait(timeout=10)
    reading = threading.Event()
    reader_done: list[float] = []

    def analyst() -> None:
        with connect(db_url) as conn:
            conn.execute(ANALYST_QUERY)
            reading.set()
            conn.execute("SELECT pg_sleep(4)")
            conn.rollback()
            reader_done.append(time.monotonic())

    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def lookups() -> None:
        entity = 1
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                found = store.document(entity, day)
                if found is None:
                    failures.append(f"miss {entity}")
            except StoreUnavailable as exc:
                failures.append(str(exc))
            latencies.append(time.perf_counter() - t0)
            entity = entity % 2_000 + 1
            time.sleep(0.002)

    threads = [threading.Thread(target=analyst), threading.Thread(target=lookups)]
    try:
        threads[0].start()
        assert reading.wait(10)
        threads[1].start()
        batch.run_batch(spec, day, "after", scorer=scorer,
                        policy=batch.LockPolicy(lock_timeout_ms=100, deadline_s=60))
        swapped_at = time.monotonic()
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        store.close()
    assert reader_done and swapped_at >= reader_done[0]  # it waited for the reader, then swapped
    assert set(stored_runs(db_url, day)) == {"after"}
    worst_ms = max(latencies) * 1000
    print(f"lookups during the swap: {len(latencies)}, worst {worst_ms:.0f} ms, failures {len(failures)}")
    assert not failures, failures[:3]
    assert len(latencies) > 100
    # target <= 250 ms (each swap attempt waits at most 100 ms); slack for a loaded shared test machine
    assert worst_ms <= 600, worst_ms


def test_a_serving_query_behind_a_lock_answers_quickly(spec, scorer, db_url, demo_features):
    day = demo_features - dt.timedelta(days=14)
    batch.run_batch(spec, day, "locked_day", scorer=scorer)
    store = ServingDatabase(spec, db_url, max_size=1, statement_timeout_ms=1000, lock_timeout_ms=200).open()
    store.pool.wait(timeout=10)
    try:
        assert store.document(1, day) is not None
        with connect(db_url) as holder:
            holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")  # what a stuck DDL would hold
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="lock timeout"):
                store.document(1, day)
            assert time.monotonic() - started < 1.5
            holder.rollback()
        assert store.document(1, day) is not None  # the pooled connection is still good
        with store.pool.connection() as conn:
            timeouts = conn.execute("SELECT current_setting('statement_timeout'), "
                                    "current_setting('lock_timeout')").fetchone()
        assert timeouts == ("1s", "200ms")
    finally:
        store.close()


def test_make_up_postgres_is_durable_and_only_the_throwaway_one_is_not(db_url, pg_cluster, tmp_path):
    """`make up`'s cluster (stack/up.py builds a default PgCluster) keeps fsync, full_page_writes and
    synchronous_commit on; the test suite's throwaway cluster turns them off for speed."""
    from stack.config import StackConfig
    from stack.pg import PgCluster
    from stack.up import _cluster

    stack_cluster = _cluster(StackConfig.from_env({"STACK_HOME": str(tmp_path)}))
    assert stack_cluster.durable and "fsync" not in stack_cluster.server_options()
    assert "fsync=off" in PgCluster(tmp_path / "pgdata", 1, durable=False).server_options()
    with connect(db_url) as conn:
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                     "('fsync', 'full_page_writes', 'synchronous_commit')").fetchall())
    assert settings == {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}
    assert not pg_cluster.durable


def test_an_unreachable_database_fails_fast_after_the_first_pool_timeout(specs):
    """While the database is down, only the first request waits for the pool; the next ones answer at once
    (a sync worker is not held for SERVING_DB_TIMEOUT_S per lookup while live predictions queue behind it)."""
    from stack.pg import free_port

    store = ServingDatabase(specs["churn"], f"postgresql://postgres@127.0.0.1:{free_port()}/serving", min_size=0,
                            max_size=1, timeout_s=0.5).open()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no connection within 0.5s"):
            store.document(1, dt.date(2026, 11, 1))
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no connection within"):
            store.document(1, dt.date(2026, 11, 1))
        assert time.monotonic() - started < 0.1
    finally:
        store.close()
