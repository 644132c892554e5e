"""PostgreSQL storage helpers shared by the jobs: day partitions of list-partitioned tables."""

from __future__ import annotations

import datetime as dt

import psycopg
from psycopg import sql


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
