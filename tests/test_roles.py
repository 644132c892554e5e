"""Least-privilege PostgreSQL roles (sql/007_roles.sql, scoring/roles.py) on the session's real PostgreSQL: each
component's role can do its job and nothing beside it."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from scoring.roles import BATCH, FEATURES, PASSWORD_VARS, SERVING, WORKER, grant_prediction_tables, set_passwords

PASSWORDS = {var: f"pw-{uuid.uuid4().hex}" for var in PASSWORD_VARS.values()}


def as_role(url: str, role: str, dbname: str | None = None) -> str:
    params = conninfo_to_dict(url)
    params.update(user=role, password=PASSWORDS[PASSWORD_VARS[role]])
    if dbname:
        params["dbname"] = dbname
    return make_conninfo(**params)


@pytest.fixture(scope="module")
def roles(db_url: str, specs) -> str:
    with psycopg.connect(db_url, autocommit=True) as admin:
        assert set(set_passwords(admin, PASSWORDS)) == set(PASSWORD_VARS)
        grant_prediction_tables(admin, specs.values())
        hashed = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (SERVING,)).fetchone()[0]
    assert hashed.startswith("SCRAM-SHA-256$")  # hashed before it reached the server
    return db_url


def denied(url: str, statement: str, params: tuple = ()) -> bool:
    with psycopg.connect(url) as conn:
        try:
            conn.execute(statement, params)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def test_roles_have_no_superpowers(roles: str) -> None:
    with psycopg.connect(roles) as admin:
        rows = admin.execute("SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles "
                             "WHERE rolname LIKE 'platform\\_%' ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == sorted(PASSWORD_VARS)
    assert all(not any(r[1:]) for r in rows), rows


def test_the_serving_role_reads_but_cannot_write_predictions(roles: str, demo_features: dt.date) -> None:
    url = as_role(roles, SERVING)
    with psycopg.connect(url) as conn:  # what serving does: lookups, features for the live fallback, batch runs
        conn.execute("SELECT count(*) FROM predictions.churn").fetchone()
        conn.execute("SELECT count(*) FROM features.customer_daily WHERE snapshot_date = %s",
                     (demo_features,)).fetchone()
        conn.execute("SELECT max(prediction_date) FROM ops.batch_runs").fetchone()
    assert denied(url, "INSERT INTO predictions.churn (prediction_date, customer_id, score, model_name, "
                       "model_version, run_id, scored_at) VALUES ('2020-01-01', 1, 0.5, 'churn', 1, 'x', now())")
    assert denied(url, "DELETE FROM predictions.churn")
    assert denied(url, "UPDATE ops.batch_runs SET status = 'failed'")
    assert denied(url, "UPDATE features.customer_daily SET churned = 1")
    assert denied(url, "CREATE TABLE predictions.sneaky (x int)")
    assert denied(url, "DELETE FROM ops.prediction_jobs")


def test_the_serving_role_cannot_read_another_database(roles: str) -> None:
    for dbname in ("mlflow", "airflow"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(as_role(roles, SERVING, dbname)).close()
    with psycopg.connect(as_role(roles, "platform_mlflow", "mlflow")) as conn:  # its owner can
        assert conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mlflow'"
                            ).fetchone()[0] == "platform_mlflow"
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(as_role(roles, "platform_mlflow", "airflow")).close()


def test_serving_submits_and_the_worker_claims_jobs_only(roles: str) -> None:
    from scoring import job_queue

    job_id = uuid.uuid4()
    with psycopg.connect(as_role(roles, SERVING)) as conn:
        conn.execute("INSERT INTO ops.prediction_jobs (id, model_name, payload, n_records) "
                     "VALUES (%s, 'roles-test', '[{}]', 1)", (job_id,))
    with psycopg.connect(as_role(roles, WORKER), autocommit=True) as conn:
        claimed = job_queue.claim(conn, "roles-test", "w-roles", 10, 30)
        assert [j.id for j in claimed] == [job_id]
    worker = as_role(roles, WORKER)
    assert denied(worker, "SELECT count(*) FROM predictions.churn")
    assert denied(worker, "SELECT count(*) FROM features.customer_daily")
    assert denied(worker, "INSERT INTO ops.prediction_jobs (id, model_name, payload, n_records) "
                          "VALUES (%s, 'roles-test', '[{}]', 1)", (uuid.uuid4(),))
    assert denied(as_role(roles, BATCH), "INSERT INTO ops.prediction_jobs (id, model_name, payload, n_records) "
                                         "VALUES (%s, 'roles-test', '[{}]', 1)", (uuid.uuid4(),))


def test_the_batch_role_runs_a_whole_batch_and_serving_reads_it(roles: str, demo_features: dt.date, specs,
                                                                trained_models: dict[str, str]) -> None:
    """Stage, COPY, swap the day's partition, record the run: all as platform_batch (which owns the tables)."""
    from scoring.batch import run_batch

    day = demo_features - dt.timedelta(days=25)  # a day no other test writes
    spec = specs["churn"]
    result = run_batch(spec, day, f"roles-{uuid.uuid4().hex[:8]}", url=as_role(roles, BATCH))
    assert result.rows_scored > 0
    again = run_batch(spec, day, f"roles-{uuid.uuid4().hex[:8]}", url=as_role(roles, BATCH))  # replaces the day
    assert again.rows_scored == result.rows_scored
    with psycopg.connect(as_role(roles, SERVING)) as conn:
        n = conn.execute("SELECT count(*) FROM predictions.churn WHERE prediction_date = %s", (day,)).fetchone()[0]
    assert n == result.rows_scored
    assert denied(as_role(roles, BATCH), "SELECT count(*) FROM ops.schema_migrations")


def test_the_payload_log_serving_writes_is_read_and_pruned_by_batch_only(roles: str, specs) -> None:
    from dataclasses import replace

    from serving.payload_log import PayloadLog
    from tests.test_payload_log import ROW, sampled

    spec = replace(specs["churn"], name=f"t_{uuid.uuid4().hex[:10]}")
    serving = as_role(roles, SERVING)
    at = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC).timestamp()  # a day of its own: its partition is made here
    plog = PayloadLog(spec, serving, rate=1.0, capacity_rows=10)
    plog.offer(sampled([ROW, ROW], at=at))
    assert plog.flush() and plog.logged == 2  # as the serving role: partition on first need, then COPY
    plog.close()
    assert denied(serving, "SELECT count(*) FROM ops.online_payloads")  # serving writes, it does not read back
    assert denied(serving, "SELECT ops.drop_online_payloads_before('2030-01-01')")
    assert denied(serving, "DROP TABLE ops.online_payloads_p20260601")
    batch = as_role(roles, BATCH)
    with psycopg.connect(batch) as conn:  # the monitor reads it; retention drops whole days
        assert conn.execute("SELECT count(*) FROM ops.online_payloads WHERE model_name = %s",
                            (spec.name,)).fetchone()[0] == 2
        dropped = [r[0] for r in conn.execute("SELECT ops.drop_online_payloads_before('2026-06-02')").fetchall()]
    assert "ops.online_payloads_p20260601" in dropped
    assert denied(batch, "INSERT INTO ops.online_payloads (model_name, log_date, logged_at, route, features, score) "
                         "VALUES ('x', '2026-06-03', now(), 'v1', '{}', 0)")
    # the async worker writes the online shadow's answers beside the champion's (sql/013_rollout.sql): it may
    # make a day's partition; the features role, which serves nothing, may not
    with psycopg.connect(as_role(roles, WORKER)) as conn:
        conn.execute("SELECT ops.ensure_online_payload_partition('2026-06-04')")
    assert denied(as_role(roles, FEATURES), "SELECT ops.ensure_online_payload_partition('2026-06-05')")
