"""A PostgreSQL cluster of our own, made with the machine's initdb/pg_ctl.

Used by `make up` (a project-local cluster under .local/, kept between runs) and by the test suite (a throwaway
cluster on a free port). PostgreSQL refuses to run as root, so as root the binaries run as the `postgres` user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from scoring.settings import load, setting


class PgError(RuntimeError):
    pass


@dataclass(frozen=True)
class PgSettings:
    bindir: Path | None = setting("PG_BINDIR")


def pg_bindir() -> Path:
    """Where initdb/pg_ctl live: PG_BINDIR, else `pg_config --bindir`, else PATH."""
    bindir = load(PgSettings).bindir
    if bindir:
        return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PgError("PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package "
                  "'postgresql' or set PG_BINDIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _as_postgres_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PgCluster:
    datadir: Path
    port: int
    user: str = "postgres"
    host: str = "127.0.0.1"
    # Durable by default (`make up`): fsync, full_page_writes and synchronous_commit stay on, so an acknowledged
    # job or a swapped-in day survives a crash. A throwaway cluster (tests, benches) may turn them off for speed.
    durable: bool = True

    @property
    def logfile(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.log"

    def url(self, dbname: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [*_as_postgres_user(), str(pg_bindir() / args[0]), *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._own(self.datadir)
        # trust on loopback only: a local development/test cluster, never exposed beyond 127.0.0.1
        out = self._run("initdb", "-D", str(self.datadir), "-U", self.user, "--auth=trust", "-E", "UTF8",
                        "--locale=C.UTF-8", "--no-sync")
        if out.returncode != 0:
            raise PgError(f"initdb failed for {self.datadir}: {out.stderr.strip() or out.stdout.strip()}")

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.datadir)).returncode == 0

    def server_options(self) -> str:
        opts = (f"-p {self.port} -c listen_addresses={self.host} -c unix_socket_directories=/tmp "
                f"-c max_connections=200")
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        return opts

    def start(self, timeout: float = 30) -> None:
        if self.running():
            return
        if port_in_use(self.port, self.host):
            raise PgError(f"port {self.port} is already taken; cannot start PostgreSQL there "
                          f"(set STACK_PG_PORT to another port)")
        self.logfile.touch()
        self._own(self.logfile)
        out = self._run("pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.logfile), "-o",
                        self.server_options(), "-w",
                        "-t", str(int(timeout)))
        if out.returncode != 0:
            tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise PgError(f"pg_ctl start failed on port {self.port}: {out.stderr.strip()}\n{tail}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise PgError(f"PostgreSQL on port {self.port} did not accept connections within {timeout}s")

    def stop(self, mode: str = "fast") -> None:
        if self.initialized() and self.running():
            self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w")

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.logfile.unlink(missing_ok=True)
