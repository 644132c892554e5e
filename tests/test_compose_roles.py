"""The roles as the container deployment uses them (issue 19, sql/010_compose_roles.sql, scoring/roles.py), on
the session's real PostgreSQL 15: the database owners MLflow and Airflow log in as can create their tables in
`public`; the feature pipeline's role writes a day of features that batch and serving read (and only it may);
a SQL_ASCII database is refused with a message naming its encoding."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from scoring.migrate import apply_migrations
from scoring.roles import AIRFLOW, BATCH, FEATURES, MLFLOW, PASSWORD_VARS, SERVING, EncodingError, set_passwords

PASSWORDS = {var: f"pw-{uuid.uuid4().hex}" for var in PASSWORD_VARS.values()}


def url_of(url: str, role: str | None = None, dbname: str | None = None) -> str:
    params = conninfo_to_dict(url)
    if role:
        params.update(user=role, password=PASSWORDS[PASSWORD_VARS[role]])
    if dbname:
        params["dbname"] = dbname
    return make_conninfo(**params)


@pytest.fixture(scope="module")
def admin_url(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as admin:
        set_passwords(admin, PASSWORDS)
    return db_url


@pytest.fixture
def scratch_db(admin_url: str) -> Iterator[tuple[str, list[str]]]:
    """Databases made by the test (name list to fill), dropped after it."""
    made: list[str] = []
    yield admin_url, made
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("role", [AIRFLOW, MLFLOW])
def test_a_database_owner_creates_its_tables_in_public(scratch_db, role: str) -> None:
    admin_url, made = scratch_db
    name = f"owned_{uuid.uuid4().hex[:8]}"
    made.append(name)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" OWNER {role}')  # as create-databases.sql + 007 leave them
    with psycopg.connect(url_of(admin_url, role, name), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.first_table (id int)")  # MLflow's and Airflow's first migration
        assert conn.execute("SELECT count(*) FROM public.first_table").fetchone() == (0,)


def test_the_features_role_writes_a_day_that_batch_and_serving_read(admin_url: str) -> None:
    from scoring.demo_data import TABLE, generate_day, write_day

    day = dt.date(2031, 2, 3)  # a day no other test uses
    with psycopg.connect(url_of(admin_url, FEATURES)) as conn:
        assert write_day(conn, generate_day(day, 50), day) == 50
        assert write_day(conn, generate_day(day, 50), day) == 50  # re-running replaces the day
    for reader in (BATCH, SERVING):
        with psycopg.connect(url_of(admin_url, reader)) as conn:
            count = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE snapshot_date = %s", (day,)).fetchone()[0]
            assert count == 50, reader
    for writer in (BATCH, SERVING):
        with psycopg.connect(url_of(admin_url, writer)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            write_day(conn, generate_day(day, 5), day)
    with psycopg.connect(url_of(admin_url, FEATURES)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM predictions.churn WHERE false")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DELETE FROM {TABLE} WHERE snapshot_date = %s", (day,))


def test_a_sql_ascii_database_is_refused_naming_its_encoding(scratch_db) -> None:
    admin_url, made = scratch_db
    name = f"ascii_{uuid.uuid4().hex[:8]}"
    made.append(name)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                      "TEMPLATE template0")
    with pytest.raises(EncodingError, match=rf"'{name}' is encoded SQL_ASCII.*UTF8"):
        apply_migrations(url_of(admin_url, dbname=name))
