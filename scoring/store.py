"""PostgreSQL storage helpers shared by the jobs: day partitions of list-partitioned tables."""

from __future__ import annotations

import datetime as dt

import psycopg
from psycopg import sql

from scoring.spec import ModelSpec


def split_table(qualified: str) -> tuple[str, str]:
    schema, table = qualified.split(".", 1)
    return schema, table


def partition_name(qualified: str, day: dt.date) -> str:
    """features.customer_daily + 2026-11-24 -> customer_daily_p20261124 (same schema)."""
    return f"{split_table(qualified)[1]}_p{day:%Y%m%d}"


def ensure_day_partition(conn: psycopg.Connection, qualified: str, day: dt.date) -> sql.Composed:
    """Create the day's partition of a table partitioned BY LIST (date) if missing; returns its identifier."""
    schema, table = split_table(qualified)
    part = sql.Identifier(schema, partition_name(qualified, day))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES IN ({})").format(
        part, sql.Identifier(schema, table), sql.Literal(day)))
    return part


def ensure_prediction_table(conn: psycopg.Connection, spec: ModelSpec) -> None:
    """The model's result table (partitioned by prediction date) and its `<table>_latest` view, from the spec.

    Derived from models.yaml rather than a numbered migration so that adding a model is adding an entry.
    `score` is the class-1 probability (classifier) or the predicted value (regressor); `label` is the class.
    """
    schema, table = split_table(spec.prediction_table)
    key = sql.Identifier(spec.source.entity_key)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {table} (
            prediction_date date             NOT NULL,
            {key}           bigint           NOT NULL,
            score           double precision NOT NULL,
            label           smallint,
            model_name      text             NOT NULL,
            model_version   integer          NOT NULL,
            run_id          text             NOT NULL,
            scored_at       timestamptz      NOT NULL,
            PRIMARY KEY (prediction_date, {key})
        ) PARTITION BY LIST (prediction_date)""").format(table=sql.Identifier(schema, table), key=key))
    conn.execute(sql.SQL("""
        CREATE OR REPLACE VIEW {view} AS
        SELECT DISTINCT ON ({key}) * FROM {table} ORDER BY {key}, prediction_date DESC""").format(
        view=sql.Identifier(schema, f"{table}_latest"), table=sql.Identifier(schema, table), key=key))
    ensure_reasons_table(conn, spec)


def reasons_table(spec: ModelSpec) -> str:
    """predictions.churn -> predictions.churn_reasons: the nightly run's top-k contributions per entity."""
    return f"{spec.prediction_table}_reasons"


def ensure_reasons_table(conn: psycopg.Connection, spec: ModelSpec) -> None:
    """The model's reasons table (models.yaml `batch.explain`), partitioned by date like its prediction table and
    swapped in with it. Narrow: one row per (date, entity, rank), typed columns, so SQL filters, joins and groups
    on a feature name without JSON. `value` is the number the model saw (a category's spec code), `category`
    the category itself; both NULL when the value was missing. `contribution` is in margin space (log-odds for a
    classifier); rank 1 is the largest |contribution|."""
    schema, table = split_table(reasons_table(spec))
    key = sql.Identifier(spec.source.entity_key)
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {table} (
            prediction_date date             NOT NULL,
            {key}           bigint           NOT NULL,
            rank            smallint         NOT NULL,
            feature         text             NOT NULL,
            value           double precision,
            category        text,
            contribution    real             NOT NULL,
            model_version   integer          NOT NULL,
            run_id          text             NOT NULL,
            PRIMARY KEY (prediction_date, {key}, rank)
        ) PARTITION BY LIST (prediction_date)""").format(table=sql.Identifier(schema, table), key=key))
