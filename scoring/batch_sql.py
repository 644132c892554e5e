"""The SQL of a batch run, built with psycopg.sql (identifiers quoted, values as literals): table names, the
feature COPY query, the staging table's DDL, the partition swap and retention.

No decisions here: `scoring.batch` says when each statement runs, in which transaction, and what a failure means.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg
from psycopg import sql

from scoring.spec import Feature, ModelSpec
from scoring.store import partition_name, reasons_table, split_table

NUMERIC_TYPES = {"smallint", "integer", "bigint", "real", "double precision", "numeric"}
TEXT_TYPES = {"text", "character varying", "character"}
INTEGER_TYPES = {"smallint", "integer", "bigint"}


def idle(conn: psycopg.Connection) -> None:
    """End an implicit transaction left open by a read, so that `conn.transaction()` really commits
    (inside an open transaction psycopg would only make a savepoint)."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        conn.commit()


def ident(qualified: str) -> sql.Identifier:
    return sql.Identifier(*split_table(qualified))


def staging_table_name(spec: ModelSpec, day: dt.date, batch_run_id: int, parent: str | None = None) -> str:
    """predictions.churn + 2026-11-01 + run 42 -> predictions.churn_stage_p20261101_r42: one per run, so two runs
    of the same (model, date) never load, index or swap each other's table. `parent`: another table of the run
    (its reasons)."""
    schema, table = split_table(parent or spec.prediction_table)
    return f"{schema}.{table}_stage_p{day:%Y%m%d}_r{batch_run_id}"


def staging_tables_of_day(conn: psycopg.Connection, spec: ModelSpec, day: dt.date,
                          parent: str | None = None) -> list[str]:
    """Every run's staging table of (model, date) that exists (schema-qualified)."""
    schema, table = split_table(parent or spec.prediction_table)
    prefix = f"{table}_stage_p{day:%Y%m%d}_r"
    rows = conn.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relkind = 'r' AND left(c.relname, %s) = %s",
                        (schema, len(prefix), prefix)).fetchall()
    return [f"{schema}.{name}" for (name,) in rows]


def set_lock_timeout(conn: psycopg.Connection, milliseconds: int) -> None:
    """Bound every lock wait of the caller's transaction (advisory locks included)."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(milliseconds)}ms")))


def latest_run(conn: psycopg.Connection, spec: ModelSpec, day: dt.date) -> tuple[int, str] | None:
    """(id, run_id) of the run of (model, date) prepared last: the one that owns the date's swap."""
    return conn.execute("SELECT id, run_id FROM ops.batch_runs WHERE model_name = %s AND prediction_date = %s "
                        "ORDER BY id DESC LIMIT 1", (spec.name, day)).fetchone()


def table_exists(conn: psycopg.Connection, qualified: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (sql.Identifier(*split_table(qualified)).as_string(conn),)).fetchone()[0]


def lock_holders(conn: psycopg.Connection, qualified: str) -> list[str]:
    """Who holds locks on a table (or its partitions) other than us: 'pid 123 (analyst, idle in transaction
    for 12s: SELECT ...)', for the message of a swap that gave up."""
    rows = conn.execute(
        "SELECT DISTINCT a.pid, a.usename, a.state, extract(epoch FROM now() - a.xact_start)::int, "
        "left(regexp_replace(a.query, '\\s+', ' ', 'g'), 80) FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.granted AND l.pid <> pg_backend_pid() "
        "AND l.relation IN (SELECT %s::regclass UNION ALL SELECT inhrelid FROM pg_inherits "
        "WHERE inhparent = %s::regclass)", (qualified, qualified)).fetchall()
    return [f"pid {pid} ({user}, {state} for {age}s: {query})" for pid, user, state, age, query in rows]


def lock_run(conn: psycopg.Connection, spec: ModelSpec, day: dt.date) -> None:
    """Serialise prepare and swap of one (model, date) until the caller's transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"batch:{spec.name}:{day}",))


# ---------------------------------------------------------------------------------------------- reading features

def column_types(conn: psycopg.Connection, table: str) -> dict[str, str]:
    """{column: data type} of a table; empty when it does not exist."""
    schema, name = split_table(table)
    rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s", (schema, name)).fetchall()
    return dict(rows)


def has_feature_rows(conn: psycopg.Connection, spec: ModelSpec, day: dt.date) -> bool:
    src = spec.source
    return conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} WHERE {d} = %s)").format(
        t=ident(src.table), d=sql.Identifier(src.date_column)), (day,)).fetchone()[0]


def shard_filter(spec: ModelSpec, shard: int, shards: int) -> sql.Composable:
    """Rows of one shard: the entity key modulo the shard count (non-negative for negative keys too)."""
    if shards == 1:
        return sql.SQL("")
    key = sql.Identifier(spec.source.entity_key)
    return sql.SQL(" AND ((({key} % {n}) + {n}) % {n}) = {i}").format(key=key, n=sql.Literal(shards),
                                                                     i=sql.Literal(shard))


def _feature_expr(feature: Feature, column_type: str) -> sql.Composable:
    col = sql.Identifier(feature.name)
    if feature.type == "category" and column_type in TEXT_TYPES:
        # spec code of the value; NULL stays missing (NaN); an unknown value becomes -1, which encode_columns
        # rejects; the exact value and reason are re-read for rejected rows only.
        # (a simple CASE costs the server ~20% less than array_position over a text[] per row)
        whens = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}::float8").format(sql.Literal(c), sql.Literal(i))
                                  for i, c in enumerate(feature.categories))
        return sql.SQL("CASE {col}::text {whens} ELSE CASE WHEN {col} IS NULL THEN 'NaN'::float8 "
                       "ELSE -1::float8 END END").format(col=col, whens=whens)
    return sql.SQL("COALESCE({col}::float8, 'NaN'::float8)").format(col=col)


def feature_copy_sql(spec: ModelSpec, types: dict[str, str], day: dt.date, shard: int = 0,
                     shards: int = 1) -> sql.Composed:
    """Binary COPY of (key, feature...) as fixed-width float8 rows: what `pgcopy.read_fixed_rows` parses."""
    src = spec.source
    return sql.SQL("COPY (SELECT {key}::bigint, {exprs} FROM {table} WHERE {date} = {day} AND {key} IS NOT NULL"
                   "{shard}) TO STDOUT (FORMAT binary)").format(
        key=sql.Identifier(src.entity_key),
        exprs=sql.SQL(", ").join(_feature_expr(f, types[f.name]) for f in spec.features),
        table=ident(src.table), date=sql.Identifier(src.date_column), day=sql.Literal(day),
        shard=shard_filter(spec, shard, shards))


def raw_rows_sql(spec: ModelSpec) -> sql.Composed:
    """The source rows of some keys of a day, as stored (to explain rejects with the real values)."""
    src = spec.source
    return sql.SQL("SELECT * FROM {t} WHERE {d} = %s AND {k} = ANY(%s)").format(
        t=ident(src.table), d=sql.Identifier(src.date_column), k=sql.Identifier(src.entity_key))


# ---------------------------------------------------------------------------------------------- the staging table

@dataclass(frozen=True)
class Layout:
    """A day-partitioned table a run stages and swaps in: the predictions, or their reasons (batch.explain)."""

    parent: str  # schema.table
    key_columns: tuple[str, ...]  # the primary key
    run_columns: tuple[str, ...]  # per-run constants, column defaults while staging (shards COPY the rest)

    @property
    def name(self) -> str:
        return split_table(self.parent)[1]


def prediction_layout(spec: ModelSpec) -> Layout:
    return Layout(spec.prediction_table, ("prediction_date", spec.source.entity_key),
                  ("prediction_date", "model_name", "model_version", "run_id", "scored_at"))


def reasons_layout(spec: ModelSpec) -> Layout:
    return Layout(reasons_table(spec), ("prediction_date", spec.source.entity_key, "rank"),
                  ("prediction_date", "model_version", "run_id"))


def create_staging(conn: psycopg.Connection, spec: ModelSpec, stage: str, day: dt.date, run_id: str,
                   version: str, layout: Layout | None = None) -> None:
    """(Re)create the empty staging table of a run, shaped like the layout's table (the prediction table)."""
    layout = layout or prediction_layout(spec)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(stage)))
    conn.execute(sql.SQL("CREATE TABLE {stage} (LIKE {parent} INCLUDING DEFAULTS)").format(
        stage=ident(stage), parent=ident(layout.parent)))
    # Shards COPY only (key, score, label) or the reasons; the per-run constants come from column defaults.
    values = {"prediction_date": sql.Literal(day), "model_name": sql.Literal(spec.name),
              "model_version": sql.Literal(int(version)), "run_id": sql.Literal(run_id), "scored_at": sql.SQL("now()")}
    conn.execute(sql.SQL("ALTER TABLE {stage} {defaults}").format(stage=ident(stage), defaults=sql.SQL(", ").join(
        sql.SQL("ALTER {} SET DEFAULT {}").format(sql.Identifier(c), values[c]) for c in layout.run_columns)))


def drop_table(conn: psycopg.Connection, qualified: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(qualified)))


def prediction_copy_sql(spec: ModelSpec, stage: str) -> sql.Composed:
    """Binary COPY of (key, score[, label]) into the staging table: what `pgcopy.prediction_rows` writes."""
    return sql.SQL("COPY {stage} ({key}, score{label}) FROM STDIN (FORMAT binary)").format(
        stage=ident(stage), key=sql.Identifier(spec.source.entity_key),
        label=sql.SQL(", label" if spec.is_classifier else ""))


def reasons_copy_sql(spec: ModelSpec, stage: str) -> sql.Composed:
    """Text COPY of (key, rank, feature, value, category, contribution): what `scoring.reasons` writes."""
    return sql.SQL("COPY {stage} ({key}, rank, feature, value, category, contribution) FROM STDIN").format(
        stage=ident(stage), key=sql.Identifier(spec.source.entity_key))


def keep_top_reasons(conn: psycopg.Connection, spec: ModelSpec, stage: str, reasons_stage: str, top: int) -> int:
    """Trim the reasons staged by each shard (each explains its own top N) to the day's top N by score (ties:
    lower key first, as the shards chose); returns the rows deleted."""
    key = sql.Identifier(spec.source.entity_key)
    return conn.execute(sql.SQL(
        "DELETE FROM {reasons} r WHERE NOT EXISTS (SELECT 1 FROM (SELECT {key} FROM {stage} "
        "ORDER BY score DESC, {key} LIMIT {top}) t WHERE t.{key} = r.{key})").format(
        reasons=ident(reasons_stage), stage=ident(stage), key=key, top=sql.Literal(top))).rowcount


# ---------------------------------------------------------------------------------------------- swap and retention

def _check_name(layout: Layout) -> str:
    return f"{layout.name}_stage_day"


def index_staging(conn: psycopg.Connection, spec: ModelSpec, stage: str, day: dt.date,
                  layout: Layout | None = None) -> None:
    """Primary key and date check, built before the swap so that the swap itself only touches catalogs:
    ATTACH skips its validation scan when a CHECK constraint already proves the partition bound. Idempotent:
    a swap retried after a failed attempt finds them built."""
    layout = layout or prediction_layout(spec)
    built = {name for (name,) in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass",
                                              (ident(stage).as_string(conn),)).fetchall()}
    if _check_name(layout) not in built:
        conn.execute(sql.SQL("ALTER TABLE {stage} ADD CONSTRAINT {chk} CHECK (prediction_date IS NOT NULL "
                             "AND prediction_date = {day})").format(
            stage=ident(stage), chk=sql.Identifier(_check_name(layout)), day=sql.Literal(day)))
    if f"{split_table(stage)[1]}_pkey" not in built:
        conn.execute(sql.SQL("ALTER TABLE {stage} ADD CONSTRAINT {pkey} PRIMARY KEY ({keys})").format(
            stage=ident(stage), pkey=sql.Identifier(f"{split_table(stage)[1]}_pkey"),
            keys=sql.SQL(", ").join(map(sql.Identifier, layout.key_columns))))


def drop_day_partition(conn: psycopg.Connection, layout: Layout, day: dt.date) -> None:
    """Detach and drop the date's partition of the layout's table, if it has one."""
    schema, _ = split_table(layout.parent)
    final = partition_name(layout.parent, day)
    old = conn.execute("SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                       "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                       (schema, final)).fetchone()
    if old:
        conn.execute(sql.SQL("ALTER TABLE {parent} DETACH PARTITION {old}").format(
            parent=ident(layout.parent), old=sql.Identifier(schema, final)))
        conn.execute(sql.SQL("DROP TABLE {old}").format(old=sql.Identifier(schema, final)))


def swap_partition(conn: psycopg.Connection, spec: ModelSpec, stage: str, day: dt.date,
                   layout: Layout | None = None) -> None:
    """Replace the date's partition with the (indexed) staging table, inside the caller's transaction (which
    holds the run's lock and bounds its lock waits): detach + drop the old partition, rename the staging table,
    attach it."""
    layout = layout or prediction_layout(spec)
    schema, _ = split_table(layout.parent)
    final = partition_name(layout.parent, day)
    parent = ident(layout.parent)
    drop_day_partition(conn, layout, day)
    conn.execute(sql.SQL("ALTER TABLE {stage} RENAME TO {final}").format(stage=ident(stage),
                                                                         final=sql.Identifier(final)))
    staged = sql.Identifier(schema, final)
    conn.execute(sql.SQL("ALTER INDEX {idx} RENAME TO {new}").format(
        idx=sql.Identifier(schema, f"{split_table(stage)[1]}_pkey"), new=sql.Identifier(f"{final}_pkey")))
    conn.execute(sql.SQL("ALTER TABLE {t} {drops}").format(t=staged, drops=sql.SQL(", ").join(
        sql.SQL("ALTER {} DROP DEFAULT").format(sql.Identifier(c)) for c in layout.run_columns)))
    conn.execute(sql.SQL("ALTER TABLE {parent} ATTACH PARTITION {t} FOR VALUES IN ({day})").format(
        parent=parent, t=staged, day=sql.Literal(day)))
    conn.execute(sql.SQL("ALTER TABLE {t} DROP CONSTRAINT {chk}").format(
        t=staged, chk=sql.Identifier(_check_name(layout))))


def partitions_before(conn: psycopg.Connection, spec: ModelSpec, cutoff: dt.date,
                      layout: Layout | None = None) -> list[str]:
    """The prediction table's (or the layout's) day partitions (`<table>_pYYYYMMDD`) older than `cutoff`
    (schema-qualified); any other child table is left alone."""
    schema, table = split_table((layout or prediction_layout(spec)).parent)
    children = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE n.nspname = %s AND p.relname = %s ORDER BY 1", (schema, table)).fetchall()
    old = []
    prefix = f"{table}_p"
    for (name,) in children:
        suffix = name[len(prefix):] if name.startswith(prefix) else ""
        try:
            day = dt.datetime.strptime(suffix, "%Y%m%d").date()
        except ValueError:
            continue  # not one of ours
        if day < cutoff:
            old.append(f"{schema}.{name}")
    return old
