"""The precomputed-lookup store against a real PostgreSQL: the document PostgreSQL renders, misses, and a
connection that dies under it (the statement is prepared again on the new connection)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pytest
from psycopg import sql

from scoring.db import connect
from scoring.store import ensure_day_partition, ensure_prediction_table
from serving.database import ServingDatabase
from serving.failures import StoreUnavailable

DAY = dt.date(2026, 3, 14)
SCORED_AT = dt.datetime(2026, 3, 15, 2, 3, 4, 567890, tzinfo=dt.UTC)
# float32 scores as the scorer makes them, stored as double precision: the awkward digits are the point
SCORES = {1: float(np.float32(0.3)), 2: 1e-05, 3: float(np.float32(0.99999994)), 4: 0.0}


@pytest.fixture(scope="module")
def store(db_url, specs):
    spec = dataclasses.replace(specs["churn"], prediction_table="predictions.lookup_store_test")
    with connect(db_url) as conn:
        ensure_prediction_table(conn, spec)
        part = ensure_day_partition(conn, spec.prediction_table, DAY)
        for entity, score in SCORES.items():
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, 'churn', 7, 'run_x', %s)").format(part),
                         (DAY, entity, score, None if entity == 4 else int(score > 0.5), SCORED_AT))
        conn.commit()
    st = ServingDatabase(spec, db_url, max_size=1).open()
    st.pool.wait(timeout=10)
    yield st
    st.close()
    with connect(db_url) as conn:
        conn.execute("DROP TABLE predictions.lookup_store_test CASCADE")
        conn.commit()


def test_document_is_the_stored_row_in_the_documented_order(store):
    for entity, score in SCORES.items():
        doc = json.loads(store.document(entity, DAY))
        assert list(doc) == ["model", "entity_key", "entity_id", "prediction_date", "score", "label",
                             "model_version", "run_id", "scored_at", "source"]
        assert doc["score"] == score  # exactly the stored double, as Python's json would write it
        assert doc == {"model": "churn", "entity_key": "customer_id", "entity_id": entity,
                       "prediction_date": DAY.isoformat(), "score": score,
                       "label": None if entity == 4 else int(score > 0.5), "model_version": "7", "run_id": "run_x",
                       "scored_at": doc["scored_at"], "source": "precomputed"}
        assert dt.datetime.fromisoformat(doc["scored_at"]) == SCORED_AT


def test_misses(store):
    assert store.document(999, DAY) is None
    assert store.document(1, DAY + dt.timedelta(days=1)) is None


def test_a_killed_connection_is_replaced_and_the_statement_prepared_again(store, db_url):
    assert store.document(1, DAY) is not None
    with store.pool.connection() as conn:
        pid = conn.info.backend_pid
    with connect(db_url) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        admin.commit()
    # The pooled connection is dead: the request that finds out answers StoreUnavailable, never a wrong value.
    outcomes = []
    for _ in range(20):
        try:
            outcomes.append(store.document(1, DAY))
        except StoreUnavailable as exc:
            outcomes.append(str(exc))
        if isinstance(outcomes[-1], bytes):
            break
    assert isinstance(outcomes[-1], bytes) and json.loads(outcomes[-1])["entity_id"] == 1, outcomes
    assert all(isinstance(o, bytes) or "unavailable" in o for o in outcomes)
    with store.pool.connection() as conn:
        assert conn.info.backend_pid != pid


def test_an_unmigrated_table_is_unavailable_not_an_error(db_url, specs):
    spec = dataclasses.replace(specs["churn"], prediction_table="predictions.never_created")
    st = ServingDatabase(spec, db_url, max_size=1).open()
    try:
        with pytest.raises(StoreUnavailable, match="not migrated"):
            st.document(1, DAY)
    finally:
        st.close()
