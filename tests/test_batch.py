"""The batch scoring path (scoring.batch) against the real PostgreSQL and a real MLflow registry.

Dates: runs on days inside the demo history leave ordinary predictions behind (as the nightly job would);
tests that need their own (bad) feature rows use days after the history and remove everything they made, so
that the online service's "latest successful date" stays the history's last day for the other test files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import sql

from scoring import batch
from scoring.db import connect
from scoring.demo_data import TABLE, generate_day, write_day
from scoring.registry import RegistryError
from scoring.scorer import Scorer
from testing.faults import STALL_MARKER

REPO = Path(__file__).resolve().parent.parent
PRIVATE_DAYS = [dt.date(2026, 12, 1), dt.date(2026, 12, 2)]  # after the history: created and removed here


@pytest.fixture(scope="module")
def ready(db_url, trained_models, demo_features):
    return demo_features


@pytest.fixture
def private_day(db_url, ready):
    """A day of (clean) features after the history; everything written for it is removed afterwards."""
    day = PRIVATE_DAYS[0]
    with connect(db_url) as conn:
        write_day(conn, generate_day(day, 1_000), day)
    yield day
    with connect(db_url) as conn:
        for table in ("predictions.churn", "predictions.churn_reasons", "predictions.spend", TABLE):
            schema, base = table.split(".")
            names = [f"{base}_p{day:%Y%m%d}", *(r[0] for r in conn.execute(  # and any run's staging table
                "SELECT relname FROM pg_class WHERE relname LIKE %s", (f"{base}\\_stage\\_p{day:%Y%m%d}%",)))]
            for name in names:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))
        conn.execute("DELETE FROM ops.batch_runs WHERE prediction_date = %s", (day,))
        conn.execute("DELETE FROM ops.prediction_rejects WHERE prediction_date = %s", (day,))
        conn.commit()


def stored(db_url: str, spec, day: dt.date) -> pd.DataFrame:
    key = spec.source.entity_key
    with connect(db_url) as conn:
        rows = conn.execute(sql.SQL("SELECT {k}, score, label, model_version, run_id FROM {t} "
                                    "WHERE prediction_date = %s ORDER BY {k}").format(
            k=sql.Identifier(key), t=sql.Identifier(*spec.prediction_table.split("."))), (day,)).fetchall()
    return pd.DataFrame(rows, columns=[key, "score", "label", "model_version", "run_id"])


def features(db_url: str, spec, day: dt.date) -> pd.DataFrame:
    cols = [spec.source.entity_key, *spec.feature_names]
    with connect(db_url) as conn:
        rows = conn.execute(sql.SQL("SELECT {} FROM features.customer_daily WHERE snapshot_date = %s ORDER BY 1")
                            .format(sql.SQL(", ").join(map(sql.Identifier, cols))), (day,)).fetchall()
    return pd.DataFrame(rows, columns=cols)


def runs(db_url: str, model: str, day: dt.date) -> list[tuple]:
    with connect(db_url) as conn:
        return conn.execute("SELECT run_id, status, rows_scored, rows_rejected, error FROM ops.batch_runs "
                            "WHERE model_name = %s AND prediction_date = %s ORDER BY id", (model, day)).fetchall()


def stage_tables(db_url: str) -> list[str]:
    with connect(db_url) as conn:
        return [r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relname LIKE '%\\_stage\\_p%'")]


@pytest.mark.parametrize("name", ["churn", "spend"])
def test_batch_rows_equal_the_shared_scorer(name, specs, db_url, ready, trained_models):
    """Invariant 1: what the batch path stores is exactly what Scorer.score gives for the same features."""
    spec, day = specs[name], ready - dt.timedelta(days=4)
    result = batch.run_batch(spec, day, f"test_inv_{name}", chunk_rows=700)  # several chunks per shard
    frame = features(db_url, spec, day)
    out = stored(db_url, spec, day)
    assert result.rows_scored == len(frame) == len(out) and result.rows_rejected == 0
    assert out[spec.source.entity_key].tolist() == frame[spec.source.entity_key].tolist()
    expected = Scorer.from_registry(spec, "champion").score(frame[spec.feature_names])
    np.testing.assert_array_equal(out["score"].to_numpy(), expected.scores.astype(np.float64))
    if spec.is_classifier:
        np.testing.assert_array_equal(out["label"].to_numpy(), expected.labels)
    else:
        assert out["label"].isna().all()
    assert set(out["model_version"]) == {int(trained_models[name])}
    assert set(out["run_id"]) == {f"test_inv_{name}"}
    assert runs(db_url, name, day)[-1][:4] == (f"test_inv_{name}", "success", len(frame), 0)


def test_rerun_replaces_and_retention_drops_old_partitions(specs, db_url, ready, monkeypatch):
    spec, day = specs["churn"], ready - dt.timedelta(days=5)
    batch.run_batch(spec, day, "test_rerun_1", shards=3)
    first = stored(db_url, spec, day)
    monkeypatch.setenv("SCORING_COPY_READER", "psycopg")  # the fallback reader (no psql) gives the same rows
    batch.run_batch(spec, day, "test_rerun_2", shards=1)
    second = stored(db_url, spec, day)
    assert len(first) == len(second) == 2_000 and second[spec.source.entity_key].is_unique
    assert set(second["run_id"]) == {"test_rerun_2"}
    np.testing.assert_array_equal(first["score"], second["score"])
    assert not stage_tables(db_url)
    with connect(db_url) as conn:
        dropped = batch.drop_expired(conn, spec, day + dt.timedelta(days=spec.batch.retention_days + 1))
    assert f"predictions.churn_p{day:%Y%m%d}" in dropped
    assert f"predictions.churn_reasons_p{day:%Y%m%d}" in dropped  # the day's reasons (batch.explain) go with it
    assert all(d.startswith(("predictions.churn_p", "predictions.churn_reasons_p")) and d[-8:] <= f"{day:%Y%m%d}"
               for d in dropped)
    assert stored(db_url, spec, day).empty


def kill_when_stalled(db_url: str, mlflow_server: str, day: dt.date, run_id: str, *extra: str) -> None:
    """Run testing.faulty_batch for churn on `day` until it stalls, then SIGKILL it as the OOM killer would."""
    env = {**os.environ, "DATABASE_URL": db_url, "MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.Popen([sys.executable, "-m", "testing.faulty_batch", "--model", "churn", "--date", str(day),
                             "--run-id", run_id, "--chunk-rows", "300", "--stall", "120", *extra],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 120
        seen = ""
        while STALL_MARKER not in seen:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"batch exited early: {seen}"
            seen += line
            assert time.time() < deadline, seen
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kill_mid_load_keeps_previous_predictions(specs, db_url, ready, mlflow_server):
    spec, day = specs["churn"], ready - dt.timedelta(days=6)
    batch.run_batch(spec, day, "test_before_kill")
    before = stored(db_url, spec, day)
    # The real run with the champion's scorer wrapped to stall before its second chunk (test-only launcher);
    # the first chunk is in the staging table (uncommitted) when it is killed.
    kill_when_stalled(db_url, mlflow_server, day, "test_killed")
    after = stored(db_url, spec, day)
    pd.testing.assert_frame_equal(before, after)
    assert runs(db_url, "churn", day)[-1][:2] == ("test_killed", "running")  # left behind by the dead process

    result = batch.run_batch(spec, day, "test_after_kill")
    again = stored(db_url, spec, day)
    assert result.rows_scored == len(again) == len(before) and again[spec.source.entity_key].is_unique
    assert set(again["run_id"]) == {"test_after_kill"}
    statuses = {r[0]: r[1] for r in runs(db_url, "churn", day)}
    assert statuses["test_killed"] == "failed" and statuses["test_after_kill"] == "success"
    assert not stage_tables(db_url)


def test_cli_scores_one_day_and_reports_errors(specs, db_url, ready, mlflow_server):
    """`python -m scoring.batch` runs the same steps in one process and answers with a JSON line, or an error."""
    spec, day = specs["churn"], ready - dt.timedelta(days=8)
    env = {**os.environ, "DATABASE_URL": db_url, "MLFLOW_TRACKING_URI": mlflow_server}
    cli = [sys.executable, "-m", "scoring.batch", "--model", "churn"]
    done = subprocess.run([*cli, "--date", str(day), "--run-id", "test_cli", "--chunk-rows", "700"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows_scored"] == len(stored(db_url, spec, day)) == 2_000 and report["rows_rejected"] == 0
    assert set(stored(db_url, spec, day)["run_id"]) == {"test_cli"}
    failed = subprocess.run([*cli, "--date", "2030-01-01"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 1 and "error: model 'churn': no feature rows" in failed.stderr


def _corrupt(db_url: str, day: dt.date, column: str, value, keys: list[int]) -> None:
    with connect(db_url) as conn:
        conn.execute(sql.SQL("UPDATE features.customer_daily SET {} = %s WHERE snapshot_date = %s "
                             "AND customer_id = ANY(%s)").format(sql.Identifier(column)), (value, day, keys))
        conn.commit()


def test_rejects_are_kept_with_reasons_and_too_many_fail_the_run(specs, db_url, private_day):
    spec, day = specs["churn"], private_day
    batch.run_batch(spec, day, "test_clean")
    clean = stored(db_url, spec, day)
    assert len(clean) == 1_000

    _corrupt(db_url, day, "plan", "platinum", [3, 4, 5])
    _corrupt(db_url, day, "contract", None, [7, 8])
    result = batch.run_batch(spec, day, "test_few_bad")  # 5 of 1,000 = 0.5% <= 2%: scored, rejects kept
    assert (result.rows_scored, result.rows_rejected) == (995, 5)
    assert len(stored(db_url, spec, day)) == 995
    with connect(db_url) as conn:
        rejects = conn.execute("SELECT entity_id, column_name, reason, row_data FROM ops.prediction_rejects "
                               "WHERE run_id = 'test_few_bad' ORDER BY entity_id::bigint").fetchall()
    assert [r[0] for r in rejects] == ["3", "4", "5", "7", "8"]
    assert rejects[0][1] == "plan" and "unknown_category" in rejects[0][2] and "'platinum'" in rejects[0][2]
    assert rejects[3][1] == "contract" and "null_value" in rejects[3][2] and "must not be null" in rejects[3][2]
    assert rejects[0][3]["plan"] == "platinum" and rejects[0][3]["customer_id"] == 3

    _corrupt(db_url, day, "tenure_months", None, list(range(100, 130)))  # now 35 of 1,000 = 3.5% > 2%
    with pytest.raises(batch.RejectThresholdError, match=r"35 of 1000 feature rows rejected"):
        batch.run_batch(spec, day, "test_many_bad")
    kept = stored(db_url, spec, day)
    assert len(kept) == 995 and set(kept["run_id"]) == {"test_few_bad"}  # the previous predictions stay
    last = runs(db_url, "churn", day)[-1]
    assert last[:2] == ("test_many_bad", "failed") and "reject_threshold" in last[4]
    with connect(db_url) as conn:
        n = conn.execute("SELECT count(*) FROM ops.prediction_rejects WHERE run_id = 'test_many_bad'").fetchone()[0]
    assert n == 35
    assert not stage_tables(db_url)


def test_empty_partition_missing_alias_and_unreachable_mlflow_fail_clearly(specs, db_url, ready, monkeypatch):
    spec = specs["churn"]
    with pytest.raises(batch.EmptyPartitionError, match=r"features.customer_daily for snapshot_date = 2030-01-01"):
        batch.run_batch(spec, dt.date(2030, 1, 1), "test_empty")
    from dataclasses import replace

    orphan = replace(spec, name="churn_without_champion")
    with pytest.raises(RegistryError, match="no version with alias 'champion'"):
        batch.run_batch(orphan, ready, "test_no_alias")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryError, match="unreachable"):
        batch.run_batch(spec, ready, "test_no_mlflow")
    assert runs(db_url, "churn_without_champion", ready) == []


def test_source_schema_problems_name_the_column(specs, db_url, ready):
    from dataclasses import replace

    from scoring.spec import Feature

    spec = specs["churn"]
    renamed = replace(spec, features=(*spec.features[:-1], Feature("days_since_login", "int", True)))
    with connect(db_url) as conn, pytest.raises(batch.SourceSchemaError, match="no feature column 'days_since_login'"):
        batch.check_features(conn, renamed, ready)
    text_as_number = replace(spec, features=(Feature("plan", "float"), *spec.features[1:]))
    with connect(db_url) as conn, pytest.raises(batch.SourceSchemaError, match="feature 'plan' .* of type text"):
        batch.check_features(conn, text_as_number, ready)


def test_a_retried_shard_does_not_load_twice(specs, db_url, ready):
    spec, day = specs["spend"], ready - dt.timedelta(days=7)
    scorer = Scorer.from_registry(spec, "champion")
    with connect(db_url) as conn, connect(db_url) as read_conn:
        plan = batch.prepare(conn, spec, day, "test_retry", scorer.version, shards=2)
        first = batch.score_shard(read_conn, conn, scorer, plan, 0)
        again = batch.score_shard(read_conn, conn, scorer, plan, 0)
        assert not first.skipped and again.skipped
        with pytest.raises(batch.BatchError, match="only 1 of 2 shards finished"):
            batch.swap(conn, spec, plan)
        batch.score_shard(read_conn, conn, scorer, plan, 1)
        result = batch.swap(conn, spec, plan)
        assert batch.swap(conn, spec, plan).rows_scored == result.rows_scored  # a second swap is a no-op
    out = stored(db_url, spec, day)
    assert result.rows_scored == len(out) == 2_000 and out[spec.source.entity_key].is_unique


def test_copy_stream_parser_rejects_malformed_input():
    from scoring.pgcopy import HEADER, TRAILER, CopyFormatError, fixed_rows_dtype, read_fixed_rows

    dtype = fixed_rows_dtype(2)
    rows = np.zeros(3, dtype=dtype)
    rows["count"], rows["key_len"], rows["len0"], rows["len1"] = 3, 8, 8, 8
    rows["key"], rows["v0"], rows["v1"] = [1, 2, 3], [0.5, 1.5, 2.5], [np.nan, 1, 2]
    stream = HEADER + rows.tobytes() + TRAILER
    pieces = [stream[i:i + 7] for i in range(0, len(stream), 7)]  # arbitrary message boundaries
    blocks = list(read_fixed_rows(pieces, 2, chunk_rows=2))
    assert [len(b) for b in blocks] == [2, 1]
    assert np.concatenate(blocks)["key"].tolist() == [1, 2, 3]
    with pytest.raises(CopyFormatError, match="trailer"):
        list(read_fixed_rows([HEADER + rows.tobytes()], 2, chunk_rows=10))
    bad = rows.copy()
    bad["len1"][1] = -1
    with pytest.raises(CopyFormatError, match="NULL"):
        list(read_fixed_rows([HEADER + bad.tobytes() + TRAILER], 2, chunk_rows=10))


def test_psql_reader_reports_server_errors(db_url):
    from scoring.pgcopy import copy_out

    with connect(db_url) as conn, pytest.raises(psycopg.OperationalError, match="division by zero"), \
            copy_out(conn, sql.SQL("COPY (SELECT 1/0) TO STDOUT (FORMAT binary)")) as blocks:
        list(blocks)


def test_cli_names_a_bad_setting_or_model_in_one_line_before_any_work():
    cli = [sys.executable, "-m", "scoring.batch", "--date", "2026-11-01"]
    for env, args, message in (
            ({"BATCH_SWAP_LOCK_TIMEOUT_MS": "abc"}, ["--model", "churn"],
             "error: BATCH_SWAP_LOCK_TIMEOUT_MS='abc': must be an integer"),
            ({}, ["--model", "nope"], "error: "),
    ):
        done = subprocess.run([*cli, *args], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(message) and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
