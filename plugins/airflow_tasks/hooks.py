"""Connections for DAG tasks, through Airflow's connection store (AIRFLOW_CONN_SERVING_DB, the UI, a secrets
backend): credentials never live in DAG code."""

from __future__ import annotations

import psycopg
from airflow.providers.postgres.hooks.postgres import PostgresHook

SERVING_CONN_ID = "serving_db"


def serving_db_connection() -> psycopg.Connection:
    """A psycopg 3 connection to the serving database (features, predictions, ops)."""
    conn = PostgresHook(postgres_conn_id=SERVING_CONN_ID).get_conn()
    if not isinstance(conn, psycopg.Connection):  # the provider falls back to psycopg2 only with SQLAlchemy 1.x
        raise RuntimeError("the postgres provider did not give a psycopg 3 connection")
    conn.autocommit = False
    return conn
