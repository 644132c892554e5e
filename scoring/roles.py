"""The components' PostgreSQL roles (created by sql/007_roles.sql): their passwords and the prediction tables' grants.

Passwords come from the deployment's secrets (POSTGRES_<ROLE>_PASSWORD, given to the init job only) and are hashed
here (SCRAM, libpq's PQencryptPasswordConn) so that no plain password reaches the server's statement log; a role
whose variable is unset keeps no password (it cannot log in over the network).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from scoring.settings import env_names, load, setting
from scoring.spec import ModelSpec
from scoring.store import split_table

BATCH, SERVING, WORKER, AIRFLOW, MLFLOW = ("platform_batch", "platform_serving", "platform_worker",
                                           "platform_airflow", "platform_mlflow")

FEATURES = "platform_features"  # the feature pipeline (sql/010_compose_roles.sql)


@dataclass(frozen=True)
class RolePasswords:
    """Each role's password (field name = role name); unset: the role keeps no password."""

    platform_batch: str | None = setting("POSTGRES_BATCH_PASSWORD")
    platform_serving: str | None = setting("POSTGRES_SERVING_PASSWORD")
    platform_worker: str | None = setting("POSTGRES_WORKER_PASSWORD")
    platform_airflow: str | None = setting("POSTGRES_AIRFLOW_PASSWORD")
    platform_mlflow: str | None = setting("POSTGRES_MLFLOW_PASSWORD")
    platform_features: str | None = setting("POSTGRES_FEATURES_PASSWORD")


PASSWORD_VARS = env_names(RolePasswords)  # role -> its variable


class EncodingError(RuntimeError):
    """The database cannot hold the platform's names and text as it is encoded."""


def check_encoding(conn: psycopg.Connection) -> None:
    """SQL_ASCII means no encoding at all: the server hands text back as raw bytes, which no identifier or
    label can be made of. Say so, naming the database and what to do, rather than fail on the first name."""
    encoding = (conn.pgconn.parameter_status(b"server_encoding") or b"").decode("ascii", "replace")
    if encoding.upper() == "SQL_ASCII":
        name = conn.pgconn.db.decode("utf-8", "replace")
        raise EncodingError(f"database {name!r} is encoded SQL_ASCII (no encoding: text arrives as bytes); the "
                            f"platform needs UTF8: create it with ENCODING 'UTF8' (initdb -E UTF8, or the "
                            f"official postgres image, which initialises with UTF8)")


def roles_exist(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                        (list(PASSWORD_VARS),)).fetchone()[0] == len(PASSWORD_VARS)


def set_passwords(conn: psycopg.Connection, env: Mapping[str, str] | None = None) -> list[str]:
    """Set each role's password from its variable (when set); returns the roles set."""
    done = []
    passwords = load(RolePasswords, env)
    for role in PASSWORD_VARS:
        password = getattr(passwords, role)
        if not password:
            continue
        hashed = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role),
                                                                 sql.Literal(hashed.decode())))
        done.append(role)
    return done


def grant_prediction_tables(conn: psycopg.Connection, specs: Iterable[ModelSpec]) -> None:
    """Hand every relation of the prediction schemas to the batch role (it stages, swaps and drops partitions,
    which needs ownership) and let serving read them. Idempotent; run after the spec tables are ensured."""
    check_encoding(conn)
    schemas = sorted({split_table(spec.prediction_table)[0] for spec in specs})
    for schema in schemas:
        ident = sql.Identifier(schema)
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(ident, sql.Identifier(BATCH)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, sql.Identifier(SERVING)))
        rows = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v') AND pg_get_userbyid(c.relowner) <> %s",
            (schema, BATCH)).fetchall()
        for name, kind in rows:
            what = sql.SQL("VIEW" if kind == "v" else "TABLE")
            conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(what, sql.Identifier(schema, name),
                                                                   sql.Identifier(BATCH)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(ident, sql.Identifier(SERVING)))
