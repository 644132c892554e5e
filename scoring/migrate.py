"""Apply the numbered SQL migrations in sql/ once each, in order, recording them in ops.schema_migrations.

Each file runs in its own transaction: a failing migration rolls back completely and stops the run.
An advisory lock keeps two runners (make up, the compose init job, tests) from racing. The CLI then sets the
components' role passwords from POSTGRES_<ROLE>_PASSWORD when given (scoring/roles.py).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import psycopg

from scoring.db import connect
from scoring.roles import EncodingError, grant_prediction_tables, roles_exist, set_passwords
from scoring.spec import load_specs
from scoring.store import ensure_prediction_table

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_LOCK_KEY = 727_001  # arbitrary, fixed: the advisory lock id of the migration runner
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    pass


def migration_files(sql_dir: Path = SQL_DIR) -> list[tuple[str, Path]]:
    files = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files must be named NNN_description.sql")
        files.append((match.group(1), path))
    versions = [v for v, _ in files]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {sql_dir}")
    return files


def apply_migrations(url: str | None = None, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; returns the file names applied this time."""
    applied: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute("CREATE SCHEMA IF NOT EXISTS ops")
            conn.execute("""
                CREATE TABLE IF NOT EXISTS ops.schema_migrations (
                    version    text PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())""")
            done = dict(conn.execute("SELECT version, checksum FROM ops.schema_migrations").fetchall())
            for version, path in migration_files(sql_dir):
                body = path.read_text()
                checksum = hashlib.sha256(body.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        print(f"warning: {path.name} changed after it was applied; not re-applied",
                              file=sys.stderr)
                    continue
                try:
                    with conn.transaction():
                        conn.execute(body)
                        conn.execute(
                            "INSERT INTO ops.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (version, path.name, checksum))
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {path.name} failed and was rolled back: {exc}") from exc
                applied.append(path.name)
            # Spec-derived tables (one prediction table per model in models.yaml), idempotent.
            specs = list(load_specs().values())
            for spec in specs:
                with conn.transaction():
                    ensure_prediction_table(conn, spec)
            if roles_exist(conn):  # sql/007_roles.sql: the batch role owns them, serving reads them
                with conn.transaction():
                    grant_prediction_tables(conn, specs)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="database URL (default: DATABASE_URL)")
    args = parser.parse_args()
    try:
        applied = apply_migrations(args.url)
    except (MigrationError, EncodingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"migrations: applied {len(applied)}" + (f" ({', '.join(applied)})" if applied else " (up to date)"))
    with connect(args.url, autocommit=True) as conn:  # the components' passwords, from the init job's secrets
        roles = set_passwords(conn)
    if roles:
        print(f"roles: password set for {', '.join(roles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
