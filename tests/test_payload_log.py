"""Online payload logging (serving/payload_log.py): rows as the model saw them, sampling, a bounded buffer that
never makes a request wait, nothing dropped below its size (also while the table is locked or a write fails),
drops past it counted; and, under a real gunicorn, live requests of every protocol landing in
ops.online_payloads with their request id and answer."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid

import numpy as np
import psycopg
import pytest
import requests

from scoring.encoding import encode
from scoring.scorer import Predictions
from scoring.spec import load_spec
from serving.payload_log import PayloadLog, Sampled

SPEC = load_spec("churn")
ROW = {"tenure_months": 12, "plan": "premium", "contract": "one-year", "region": None, "payment_method": "card",
       "monthly_charges": 70.5, "data_usage_gb": 12.25, "avg_session_minutes": 31.25, "support_calls_30d": 1,
       "late_payments_12m": 0, "num_products": 2, "days_since_last_login": 3}


def _records(n: int, *, start: int = 0) -> list[dict]:
    return [{**ROW, "tenure_months": start + i} for i in range(n)]


def sampled(records: list[dict], *, at: float | None = None, ids: list | None = None,
            request_id: str | None = None) -> Sampled:
    rows = [{k: v for k, v in r.items() if k in SPEC.feature_names} for r in records]
    matrix = encode(SPEC, rows).matrix
    scores = np.linspace(0.1, 0.9, len(rows)).astype(np.float32)
    labels = (scores > 0.5).astype(np.int8)
    return Sampled(at or time.time(), "3", "v1", request_id, matrix, Predictions(scores, labels), ids)


# ---------------------------------------------------------------- no database


def test_rows_are_what_the_model_saw_categories_by_name_missing_as_null():
    plog = PayloadLog(SPEC, "postgresql://unused", rate=1.0, capacity_rows=10)
    at = dt.datetime(2026, 11, 30, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    item = sampled([ROW, {**ROW, "plan": "basic", "data_usage_gb": None}], at=at, ids=[42, "not-an-int"],
                   request_id="req-1")
    rows = list(plog.rows([item]))
    assert len(rows) == 2
    model, day, logged_at, version, route, request_id, entity_id, features, score, label = rows[0]
    assert (model, day, version, route, request_id, entity_id) == ("churn", dt.date(2026, 11, 30), 3, "v1", "req-1", 42)
    assert logged_at == dt.datetime.fromtimestamp(at, dt.UTC)
    assert json.loads(features) == {k: ROW[k] for k in SPEC.feature_names}  # ints as ints, None as null
    assert score == pytest.approx(0.1) and label == 0
    second = json.loads(rows[1][7])
    assert second["plan"] == "basic" and second["data_usage_gb"] is None
    assert rows[1][6] is None  # an entity key that is not a bigint is not kept
    assert rows[1][9] == 1


def test_a_value_beyond_float32_is_kept_as_infinity_not_a_poison_row():
    plog = PayloadLog(SPEC, "postgresql://unused", rate=1.0, capacity_rows=10)
    item = sampled([ROW])  # the encoder refuses such a value today; the log must not depend on it
    item.matrix[0, SPEC.feature_names.index("data_usage_gb")] = np.inf
    assert json.loads(list(plog.rows([item]))[0][7])["data_usage_gb"] == "Infinity"


def test_sampling_follows_the_rate():
    assert not any(PayloadLog(SPEC, "x", rate=0.0, capacity_rows=1).sampled() for _ in range(1000))
    assert all(PayloadLog(SPEC, "x", rate=1.0, capacity_rows=1).sampled() for _ in range(1000))
    tenth = sum(PayloadLog(SPEC, "x", rate=0.1, capacity_rows=1).sampled() for _ in range(20_000))
    assert 1_600 < tenth < 2_400  # 2,000 expected; the bounds are > 9 standard deviations away
    with pytest.raises(ValueError, match="between 0 and 1"):
        PayloadLog(SPEC, "x", rate=1.5, capacity_rows=1)


def test_past_the_buffer_requests_are_dropped_whole_and_counted_without_waiting():
    plog = PayloadLog(SPEC, "postgresql://unused", rate=1.0, capacity_rows=25)  # no writer started
    results = [plog.offer(sampled(_records(10))) for _ in range(4)]
    assert results == [True, True, False, False]
    assert plog.buffered_rows == 20 and plog.dropped == 20


# ---------------------------------------------------------------- the real PostgreSQL


@pytest.fixture
def model_spec(db_url):
    """The churn spec under a model name of its own, so that counting rows sees only this test's."""
    from dataclasses import replace

    spec = replace(SPEC, name=f"t_{uuid.uuid4().hex[:10]}")
    yield spec
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM ops.online_payloads WHERE model_name = %s", (spec.name,))


def _count(db_url: str, model: str) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT count(*) FROM ops.online_payloads WHERE model_name = %s",
                            (model,)).fetchone()[0]


def _offer_concurrently(plog: PayloadLog, threads: int, requests_each: int, rows: int) -> list[float]:
    """Offers from `threads` threads at once; every offer's duration in seconds."""
    durations: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def client(t: int) -> None:
        barrier.wait()
        mine = []
        for i in range(requests_each):
            item = sampled(_records(rows, start=i), request_id=f"{t}-{i}")
            started = time.perf_counter()
            assert plog.offer(item)
            mine.append(time.perf_counter() - started)
        with lock:
            durations.extend(mine)

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return durations


def test_under_load_with_the_table_locked_nothing_below_the_buffer_is_dropped_and_no_offer_waits(db_url, model_spec):
    plog = PayloadLog(model_spec, db_url, rate=1.0, capacity_rows=5_000, flush_s=0.05).start()
    with psycopg.connect(db_url) as locker:
        # The writer is stuck behind this lock (as behind an analyst's DDL or a slow disk) for 1.5 s.
        locker.execute("SELECT ops.ensure_online_payload_partition(%s)", (dt.datetime.now(dt.UTC).date(),))
        locker.execute("LOCK TABLE ops.online_payloads IN ACCESS EXCLUSIVE MODE")
        started = time.perf_counter()
        durations = _offer_concurrently(plog, threads=8, requests_each=50, rows=10)  # 4,000 rows
        offered_in = time.perf_counter() - started
        time.sleep(max(0.0, 1.5 - offered_in))
        assert plog.buffered_rows == 4_000 and plog.logged == 0  # all held, none written, none dropped
        locker.rollback()  # the lock goes
    plog.close(timeout_s=30)
    assert plog.dropped == 0 and plog.logged == 4_000
    assert _count(db_url, model_spec.name) == 4_000
    # never waited on the writer: the slowest of 400 offers is far below the 1.5 s the writer was stuck
    assert max(durations) < 0.1, max(durations)
    assert sorted(durations)[len(durations) // 2] < 0.001


def test_a_failed_write_keeps_its_rows_and_lands_them_on_the_next_try(db_url, model_spec, caplog):
    # a statement timeout shorter than the lock: the first writes fail, the rows stay buffered
    plog = PayloadLog(model_spec, db_url, rate=1.0, capacity_rows=1_000, flush_s=0.05, retry_s=0.1,
                      statement_timeout_ms=100).start()
    with psycopg.connect(db_url) as locker:
        locker.execute("SELECT ops.ensure_online_payload_partition(%s)", (dt.datetime.now(dt.UTC).date(),))
        locker.execute("LOCK TABLE ops.online_payloads IN ACCESS EXCLUSIVE MODE")
        for i in range(30):
            assert plog.offer(sampled(_records(10, start=i)))
        deadline = time.time() + 10
        while "writing" not in caplog.text and time.time() < deadline:
            time.sleep(0.05)
        locker.rollback()
    assert "kept for the next try, 0 dropped" in caplog.text
    deadline = time.time() + 10
    while plog.logged < 300 and time.time() < deadline:
        time.sleep(0.05)
    plog.close()
    assert plog.logged == 300 and plog.dropped == 0 and _count(db_url, model_spec.name) == 300


def test_a_day_partition_is_created_on_first_need(db_url, model_spec):
    at = dt.datetime(2026, 7, 4, 12, tzinfo=dt.UTC).timestamp()  # a day no other test logs
    plog = PayloadLog(model_spec, db_url, rate=1.0, capacity_rows=100)
    plog.offer(sampled(_records(3), at=at))
    assert plog.flush()
    plog.close()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT to_regclass('ops.online_payloads_p20260704')").fetchone()[0] is not None
        rows = conn.execute("SELECT log_date, features->>'plan' FROM ops.online_payloads WHERE model_name = %s",
                            (model_spec.name,)).fetchall()
    assert rows == [(dt.date(2026, 7, 4), "premium")] * 3


# ---------------------------------------------------------------- under gunicorn


@pytest.fixture(scope="module")
def logged_app(db_url, trained_models, demo_features, tmp_path_factory):
    from stack.pg import free_port
    from stack.services import stop_process
    from testing.servers import start_gunicorn

    port = free_port()
    proc = start_gunicorn("churn", port, tmp_path_factory.mktemp("payloads") / "gunicorn.log", env={
        "DATABASE_URL": db_url, "SERVING_PAYLOAD_SAMPLE_RATE": "1", "SERVING_PAYLOAD_FLUSH_S": "0.1"})
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


def _rows_of(db_url: str, request_ids: list[str], timeout: float = 15) -> list[tuple]:
    deadline = time.time() + timeout
    while True:
        with psycopg.connect(db_url) as conn:
            rows = conn.execute("SELECT request_id, route, entity_id, features, score, label, model_version "
                                "FROM ops.online_payloads WHERE request_id = ANY(%s) ORDER BY request_id, score",
                                (request_ids,)).fetchall()
        if len({r[0] for r in rows}) == len(request_ids) or time.time() > deadline:
            return rows
        time.sleep(0.1)


def test_live_requests_of_every_protocol_are_logged_with_their_request_id_and_answer(logged_app, db_url,
                                                                                   trained_models):
    ids = {name: f"payload-{name}-{uuid.uuid4().hex[:8]}" for name in ("v1", "mlflow", "oip")}
    v1 = requests.post(f"{logged_app}/v1/models/churn/predict", json={"records": [{**ROW, "customer_id": 77}]},
                       headers={"X-Request-ID": ids["v1"]}, timeout=30)
    assert v1.status_code == 200, v1.text
    matrix = encode(SPEC, [ROW]).matrix
    mlflow = requests.post(f"{logged_app}/invocations", headers={"X-Request-ID": ids["mlflow"]}, timeout=30, json={
        "dataframe_split": {"columns": SPEC.feature_names,
                            "data": [[None if v != v else float(v) for v in matrix[0].tolist()]]}})
    assert mlflow.status_code == 200, mlflow.text
    kinds = {"category": "BYTES", "int": "INT64", "float": "FP64"}
    inputs = [{"name": f.name, "shape": [1], "datatype": kinds[f.type],
               "data": ["" if ROW[f.name] is None else ROW[f.name]]} for f in SPEC.features]
    oip = requests.post(f"{logged_app}/v2/models/churn/infer", json={"inputs": inputs},
                        headers={"X-Request-ID": ids["oip"]}, timeout=30)
    assert oip.status_code == 200, oip.text

    rows = {r[0]: r for r in _rows_of(db_url, list(ids.values()))}
    assert set(rows) == set(ids.values())
    answer = v1.json()["predictions"][0]
    _, route, entity_id, features, score, label, version = rows[ids["v1"]]
    assert (route, entity_id, version) == ("v1", 77, int(trained_models["churn"]))
    assert features == {k: ROW[k] for k in SPEC.feature_names}
    assert score == pytest.approx(answer["score"], rel=1e-6) and label == answer["label"]
    assert rows[ids["mlflow"]][1] == "mlflow" and rows[ids["oip"]][1] == "oip"
    # the same row through each protocol: the same features logged (MLflow's client sends the plan's code)
    assert rows[ids["mlflow"]][3] == features and rows[ids["oip"]][3] == features
    metrics = requests.get(f"{logged_app}/metrics", timeout=10).text
    assert 'serving_payload_rows_total{model="churn",outcome="logged"}' in metrics
