"""`make up` / `make down` / `make status`: the local platform as background processes with PID files.

up      idempotent: a service whose PID file names a live process is left alone (and must be healthy);
        everything else is started in order and waited for. Any failure (a port taken, a missing PostgreSQL
        binary, a service that exits or never becomes healthy) names the service and why, stops whatever
        *this* run started, and exits non-zero.
down    stops exactly what the PID files name (process groups, then stragglers), keeping all data.
status  a table of services, PIDs, ports and health.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg

from stack.catalogue import Service, airflow_env, catalogue, launch, served_models, write_airflow_login
from stack.config import DATABASES, REPO, ConfigError, StackConfig
from stack.pg import PgCluster, PgError, pg_bindir, port_in_use
from stack.procs import PidRecord, alive, port_owner, read_pid, tail, terminate, write_pid

Out = Callable[[str], None]


class StackError(RuntimeError):
    """`make up` cannot bring a service up; the message names the service and the reason."""


@dataclass
class Started:
    name: str
    record: PidRecord


# --- PostgreSQL ------------------------------------------------------------------------------------------

def _cluster(cfg: StackConfig) -> PgCluster:
    return PgCluster(cfg.pgdata, cfg.pg_port)


def _postmaster_record(cluster: PgCluster) -> PidRecord | None:
    import psutil

    try:
        pid = int((cluster.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        return PidRecord(pid=pid, create_time=psutil.Process(pid).create_time(),
                         argv=["pg_ctl", "-D", str(cluster.datadir)], port=cluster.port, kind="pg_ctl")
    except (OSError, ValueError, psutil.Error):
        return None


def _pg_running(cfg: StackConfig) -> bool:
    cluster = _cluster(cfg)
    return cluster.initialized() and cluster.running()


def ensure_postgres(cfg: StackConfig, started: list[Started], out: Out) -> None:
    if not cfg.local_postgres:
        try:
            with psycopg.connect(cfg.db_url("postgres"), connect_timeout=5, autocommit=True) as conn:
                for name in DATABASES:
                    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                        conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as exc:
            raise StackError(f"postgres: cannot use the server from DATABASE_URL ({exc})") from exc
        out("postgres: using the existing server from DATABASE_URL")
        return
    cluster = _cluster(cfg)
    pid_path = cfg.pid_file("postgres")
    if _pg_running(cfg):
        if not alive(read_pid(pid_path)) and (record := _postmaster_record(cluster)):
            write_pid(pid_path, record)  # our project-local cluster: `make down` owns it
        out(f"postgres: already running (port {cfg.pg_port})")
    else:
        cfg.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            cluster.init()
            cluster.start()
        except PgError as exc:
            raise StackError(f"postgres: {exc}") from exc
        record = _postmaster_record(cluster)
        if record is None:
            raise StackError(f"postgres: started but {cluster.datadir}/postmaster.pid is unreadable")
        write_pid(pid_path, record)
        started.append(Started("postgres", record))
        out(f"postgres: started (pid {record.pid}, port {cfg.pg_port}, data {cfg.pgdata})")
    for name in DATABASES:
        cluster.create_database(name)


def apply_migrations(cfg: StackConfig, out: Out) -> None:
    from scoring.migrate import MigrationError
    from scoring.migrate import apply_migrations as migrate

    try:
        applied = migrate(cfg.db_url("serving"))
    except (MigrationError, psycopg.Error) as exc:
        raise StackError(f"migrations: {exc}") from exc
    out(f"migrations: {'applied ' + ', '.join(applied) if applied else 'up to date'}")


def prepare_airflow(cfg: StackConfig, out: Out) -> None:
    """The fixed admin login, `airflow db migrate` and the database writers' pool (all idempotent), before any
    Airflow component starts."""
    write_airflow_login(cfg)
    log = cfg.log_file("airflow-db-migrate")
    started = time.monotonic()
    with open(log, "ab") as fh:
        result = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], cwd=REPO,
                                env=airflow_env(cfg), stdout=fh, stderr=subprocess.STDOUT, timeout=900,
                                check=False)
    if result.returncode != 0:
        raise StackError(f"airflow: `airflow db migrate` failed (exit {result.returncode}); last lines of {log}:\n"
                         f"{tail(log)}")
    from stack.celery import POOL, POOL_SLOTS, CeleryStackError, ensure_pool

    try:
        ensure_pool(cfg)
    except CeleryStackError as exc:
        raise StackError(f"airflow: {exc}") from exc
    out(f"airflow: metadata database migrated, pool {POOL} ({POOL_SLOTS} slots) "
        f"({time.monotonic() - started:.0f}s; executor: {cfg.executor})")


# --- services --------------------------------------------------------------------------------------------

def wait_healthy(svc: Service, record: PidRecord, proc: subprocess.Popen | None) -> str | None:
    """None once `svc` is healthy; else why not (it exited, or its probe kept failing until the timeout)."""
    deadline = time.time() + svc.timeout
    reason = "not checked"
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"process exited with code {proc.returncode}"
        if proc is None and not alive(record):
            return "process exited"
        reason = svc.health(record.create_time if proc is not None else None)
        if reason is None and time.time() - record.create_time >= svc.settle:
            return None
        time.sleep(0.5)
    return f"not healthy after {svc.timeout:.0f}s: {reason}"


def preflight(cfg: StackConfig, services: list[Service]) -> None:
    """Fail before starting anything: missing PostgreSQL binaries, ports taken by other programs."""
    if cfg.local_postgres:
        try:
            bindir = pg_bindir()
        except PgError as exc:
            raise StackError(f"postgres: {exc}") from exc
        for binary in ("initdb", "pg_ctl"):
            if not (bindir / binary).exists():
                raise StackError(f"postgres: {bindir / binary} not found: install the Debian package 'postgresql' "
                                 f"or set PG_BINDIR to the folder holding initdb and pg_ctl")
        if not _pg_running(cfg) and port_in_use(cfg.pg_port):
            raise StackError(_taken("postgres", cfg.pg_port, "STACK_PG_PORT"))
    overrides = {"mlflow": "STACK_MLFLOW_PORT", "airflow": "STACK_AIRFLOW_PORT", "serving": "STACK_REPLICA_PORT",
                 "gateway": "STACK_SERVING_PORT", "redis": "STACK_REDIS_PORT"}
    for svc in services:
        running = alive(read_pid(cfg.pid_file(svc.name)))
        if svc.port and not running and port_in_use(svc.port):
            raise StackError(_taken(svc.name, svc.port, overrides.get(svc.component, "")))
        grpc_port = int(svc.env.get("SERVING_GRPC_PORT") or 0)  # a replica's second port (serving/grpc/)
        if grpc_port and not running and port_in_use(grpc_port):
            raise StackError(_taken(f"{svc.name} (gRPC)", grpc_port, "STACK_REPLICA_GRPC_PORT"))


def _taken(name: str, port: int, variable: str) -> str:
    owner = port_owner(port)
    return (f"{name}: port {port} is already taken{' by ' + owner if owner else ''}; stop that program or set "
            f"{variable} to another port")


def start_stage(cfg: StackConfig, stage: list[Service], started: list[Started], out: Out,
                rolling: Collection[str] = ()) -> None:
    """Start the services of one stage side by side (they do not depend on each other), then wait for all.
    A service already running (live PID file) is left alone but must be healthy; one in `rolling` (started with
    an older models.yaml entry) is left to the rolling restart that follows."""
    launched: list[tuple[Service, subprocess.Popen, PidRecord]] = []
    for svc in stage:
        pid_path = cfg.pid_file(svc.name)
        record = read_pid(pid_path)
        if alive(record) and svc.name in rolling:
            out(f"{svc.name}: running (pid {record.pid}) with an older models.yaml entry: replaced below")
            continue
        if alive(record):
            reason = wait_healthy(svc, record, None)
            if reason:
                raise StackError(f"{svc.name}: running as pid {record.pid} but {reason}; see "
                                 f"{cfg.log_file(svc.name)} (`make down` then `make up` restarts it)")
            out(f"{svc.name}: already running (pid {record.pid})")
            continue
        pid_path.unlink(missing_ok=True)  # stale: the process is gone
        proc, record = launch(cfg, svc)
        started.append(Started(svc.name, record))
        launched.append((svc, proc, record))
    began = time.monotonic()
    for svc, proc, record in launched:
        reason = wait_healthy(svc, record, proc)
        if reason:
            raise StackError(f"{svc.name}: failed to start: {reason}; last lines of {cfg.log_file(svc.name)}:\n"
                             f"{tail(cfg.log_file(svc.name))}")
        out(f"{svc.name}: started (pid {record.pid}{f', port {svc.port}' if svc.port else ''}, "
            f"healthy after {time.monotonic() - began:.0f}s)")


def stages(services: list[Service]) -> list[list[Service]]:
    """Consecutive services with the same `stage` number start together."""
    out: list[list[Service]] = []
    for svc in services:
        if out and out[-1][0].stage == svc.stage:
            out[-1].append(svc)
        else:
            out.append([svc])
    return out


def stop_record(cfg: StackConfig, name: str, record: PidRecord) -> bool:
    if record.kind == "pg_ctl":
        cluster = PgCluster(Path(record.argv[-1]), record.port or cfg.pg_port)
        if not (alive(record) or (cluster.initialized() and cluster.running())):
            return False
        cluster.stop()
        return True
    return terminate(record)


# --- converging on models.yaml -----------------------------------------------------------------------------

def undeclared(cfg: StackConfig, services: list[Service]) -> list[tuple[str, PidRecord]]:
    """PID files of model processes this config no longer has: a model removed from models.yaml (or no longer
    served online), or a replica beyond STACK_SERVING_REPLICAS. A declared model's process of a component this
    run leaves out (STACK_COMPONENTS) is not one of them: it is left alone."""
    names = {svc.name for svc in services}
    declared = set(served_models())
    found = []
    for path in sorted(cfg.run_dir.glob("*.pid")) if cfg.run_dir.exists() else []:
        record = read_pid(path)
        if path.stem in names or record is None or record.model is None:
            continue
        if record.model in declared and not cfg.wants(record.component or ""):
            continue
        found.append((path.stem, record))
    return found


def stop_undeclared(cfg: StackConfig, services: list[Service], out: Out) -> list[str]:
    stopped = []
    for name, record in undeclared(cfg, services):
        if stop_record(cfg, name, record):
            why = (f"model '{record.model}' is no longer served in models.yaml" if record.model not in served_models()
                   else "no longer in this stack's configuration")
            out(f"{name}: stopped (pid {record.pid}; {why})")
            stopped.append(name)
        cfg.pid_file(name).unlink(missing_ok=True)
    return stopped


def changed(cfg: StackConfig, services: list[Service]) -> list[Service]:
    """Running model processes started with another models.yaml entry (or command, or port) than now."""
    out = []
    for svc in services:
        record = read_pid(cfg.pid_file(svc.name))
        if svc.fingerprint and alive(record) and record.fingerprint != svc.fingerprint:
            out.append(svc)
    return out


def up(cfg: StackConfig, out: Out = print, services: list[Service] | None = None) -> list[Service]:
    """Bring the stack up; on failure stop what this call started and raise StackError.
    `services` replaces the catalogue (tests inject a faulty one)."""
    for folder in (cfg.home, cfg.run_dir, cfg.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    cfg.home.chmod(0o755)  # the postgres user must reach pgdata inside it
    notes: list[str] = []
    if services is None:
        services, notes = catalogue(cfg)
    stop_undeclared(cfg, services, out)  # first: they may hold ports the declared services now use
    preflight(cfg, services)
    stale = changed(cfg, services)
    rolling = [svc.name for svc in stale if svc.component == "serving"]  # replaced one at a time, at the end
    for svc in stale:
        if svc.name not in rolling:  # a worker: stopped here, started again with its stage
            record = read_pid(cfg.pid_file(svc.name))
            terminate(record, timeout=30)
            cfg.pid_file(svc.name).unlink(missing_ok=True)
            out(f"{svc.name}: stopped (pid {record.pid}; started with an older models.yaml entry)")
    gateway_changed = prepare_gateway(cfg, services)
    prepare_redis(services)
    started: list[Started] = []
    try:
        if cfg.wants("postgres") or not cfg.local_postgres:
            ensure_postgres(cfg, started, out)
        apply_migrations(cfg, out)
        airflow_ready = False
        for stage in stages(services):
            if (not airflow_ready and any(svc.component == "airflow" for svc in stage)
                    and not all(alive(read_pid(cfg.pid_file(svc.name))) for svc in stage)):
                prepare_airflow(cfg, out)
                airflow_ready = True
            start_stage(cfg, stage, started, out, rolling)
    except BaseException:
        for item in reversed(started):
            stop_record(cfg, item.name, item.record)
            cfg.pid_file(item.name).unlink(missing_ok=True)
        if started:
            out(f"stopped what this run had started: {', '.join(s.name for s in started)}")
        raise
    if gateway_changed:
        reload_gateway(cfg, started, out)
    if rolling:
        from stack.rolling import RollingError, rolling_restart

        try:
            rolling_restart(cfg, out, names=rolling)
        except RollingError as exc:
            raise StackError(str(exc)) from exc
    for note in notes:
        out(f"note: {note}")
    write_env_file(cfg)
    return services


def prepare_gateway(cfg: StackConfig, services: list[Service]) -> bool:
    """nginx installed (apt-get when missing), its config written from models.yaml and checked, before anything
    starts. True when the config changed (a gateway already running then reloads it)."""
    gateway = next((s for s in services if s.component == "gateway"), None)
    if gateway is None:
        return False
    from stack.catalogue import served_models
    from stack.gateway import GatewayError, check_config, ensure_nginx, nginx_argv, replicas, write_config

    grpc = any(rep.grpc for rep in replicas(cfg, served_models()))  # the gRPC listener: once replicas serve it
    if grpc and not alive(read_pid(cfg.pid_file("gateway"))) and port_in_use(cfg.grpc_port):
        raise StackError(_taken("gateway (gRPC)", cfg.grpc_port, "STACK_GRPC_PORT"))
    try:
        binary = ensure_nginx()
        gateway.argv = nginx_argv(cfg, binary)
        _, changed = write_config(cfg, served_models())
        check_config(cfg, binary)
    except GatewayError as exc:
        raise StackError(f"gateway: {exc}") from exc
    return changed


def prepare_redis(services: list[Service]) -> None:
    """redis-server installed (apt-get when missing) before anything starts."""
    redis = next((s for s in services if s.component == "redis"), None)
    if redis is None:
        return
    from stack.celery import CeleryStackError, ensure_redis

    try:
        redis.argv[0] = ensure_redis()
    except CeleryStackError as exc:
        raise StackError(f"redis: {exc}") from exc


def reload_gateway(cfg: StackConfig, started: list[Started], out: Out) -> None:
    from stack.gateway import GatewayError, reload

    record = read_pid(cfg.pid_file("gateway"))
    if not alive(record) or any(s.name == "gateway" for s in started):
        return  # just started with the new config
    try:
        reload(record.pid)
    except GatewayError as exc:
        raise StackError(f"gateway: {exc}") from exc
    out("gateway: config changed, reloaded")


# --- down / status ---------------------------------------------------------------------------------------

def _stop_tier(name: str) -> int:
    """Stopped tier by tier, each tier in parallel: clients first (workers, serving apps, Airflow components),
    then what they talk to (Airflow api-server, MLflow), PostgreSQL last."""
    if name == "postgres":
        return 2
    if name in ("airflow-api-server", "mlflow", "redis"):
        return 1
    return 0


def down(cfg: StackConfig, out: Out = print) -> list[str]:
    pid_files = sorted(cfg.run_dir.glob("*.pid")) if cfg.run_dir.exists() else []
    if not pid_files:
        out(f"nothing to stop (no PID files in {cfg.run_dir})")
        return []

    def stop(path: Path) -> tuple[str, str]:
        record = read_pid(path)
        began = time.monotonic()
        was_running = record is not None and stop_record(cfg, path.stem, record)
        path.unlink(missing_ok=True)
        if was_running:
            return path.stem, f"{path.stem}: stopped (pid {record.pid}, {time.monotonic() - began:.1f}s)"
        return "", f"{path.stem}: was not running"

    stopped = []
    for tier in range(3):
        paths = [p for p in pid_files if _stop_tier(p.stem) == tier]
        if not paths:
            continue
        with ThreadPoolExecutor(max_workers=len(paths)) as pool:
            for name, message in pool.map(stop, paths):
                out(message)
                if name:
                    stopped.append(name)
    return stopped


def status_rows(cfg: StackConfig) -> list[tuple[str, str, str, str, str]]:
    rows = []
    if cfg.local_postgres and cfg.wants("postgres"):
        record = read_pid(cfg.pid_file("postgres"))
        running = _pg_running(cfg)
        pid = str(record.pid) if record and alive(record) else "-"
        rows.append(("postgres", pid, str(cfg.pg_port), "healthy" if running else "stopped", cfg.db_url("serving")))
    services, _ = catalogue(cfg)
    for svc in services:
        record = read_pid(cfg.pid_file(svc.name))
        if not alive(record):
            health = "stopped (stale PID file)" if record else "stopped"
            rows.append((svc.name, "-", str(svc.port or "-"), health, svc.url or ""))
            continue
        reason = svc.health(None)
        health = "healthy" if reason is None else f"unhealthy: {reason}"
        if svc.fingerprint and record.fingerprint != svc.fingerprint:
            health += "; started with an older models.yaml entry (`make up` replaces it)"
        rows.append((svc.name, str(record.pid), str(svc.port or "-"), health, svc.url or ""))
    for name, record in undeclared(cfg, services):  # started by `make up`, no longer declared: still listed
        state = "running" if alive(record) else "stopped (stale PID file)"
        rows.append((name, str(record.pid) if alive(record) else "-", str(record.port or "-"),
                     f"{state}; not declared (model '{record.model}'; `make up` stops it)", ""))
    return rows


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


# --- summary ---------------------------------------------------------------------------------------------

def write_env_file(cfg: StackConfig) -> Path:
    """`source .local/stack.env` gives a shell the stack's settings (airflow CLI, psql, mlflow client)."""
    env = airflow_env(cfg) if cfg.wants("airflow") else {}
    keys = sorted(k for k in env if k.startswith("AIRFLOW"))
    lines = [f"export DATABASE_URL={shlex.quote(cfg.db_url('serving'))}",
             f"export MLFLOW_TRACKING_URI={shlex.quote(cfg.mlflow_url)}",
             f"export STACK_SERVING_PORT={cfg.serving_port}",
             f"export STACK_GRPC_PORT={cfg.grpc_port}",
             *[f"export {k}={shlex.quote(env[k])}" for k in keys]]
    path = cfg.home / "stack.env"
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def summary(cfg: StackConfig, services: list[Service]) -> str:
    serving = [s for s in services if s.component == "serving"]
    lines = ["", "The platform is up.", ""]
    lines.append(f"  PostgreSQL     {cfg.db_url('serving')}  (databases: {', '.join(DATABASES)})")
    if cfg.wants("mlflow"):
        lines.append(f"  MLflow         {cfg.mlflow_url}  (UI + registry; artifacts in {cfg.artifacts_dir})")
        lines.append("  security       local stack: MLflow and serving have no login and no token, on loopback only "
                     "(docker-compose.yaml is the locked-down deployment)")
    if cfg.wants("airflow"):
        lines.append(f"  Airflow        {cfg.airflow_url}  login: {cfg.admin_user} / {cfg.admin_password}")
    gateway = next((s for s in services if s.component == "gateway"), None)
    if gateway is not None:
        models = list(dict.fromkeys(s.env["SERVING_MODEL"] for s in serving))
        lines.append(f"  gateway        {gateway.url}  (nginx: /v1/models/<m>/..., /v2/models/<m>/..., "
                     f"/models/<m>/invocations, /v1/jobs/<id>; models: {', '.join(models)})")
        from stack.gateway import replicas

        if any(rep.grpc for rep in replicas(cfg, models)):
            lines.append(f"  gRPC           {cfg.grpc_url}  (KServe v2 GRPCInferenceService; metadata model=<m>)")
        lines.append(f"  replicas       {len(serving)} gunicorns on {', '.join(str(s.port) for s in serving)} "
                     f"(loopback; `make restart-serving` replaces them one at a time)")
    else:
        for svc in serving:
            lines.append(f"  {svc.name:<14} {svc.url}  (health {svc.url}/healthz)")
    if any(s.component == "redis" for s in services):
        celery = [s.name for s in services if s.name.startswith("airflow-celery-worker")]
        lines.append(f"  Celery         broker {cfg.redis_url}; workers {', '.join(celery)}")
    workers = [s.name for s in services if s.component == "worker"]
    if workers:
        lines.append(f"  workers        {', '.join(workers)}")
    lines += [f"  logs           {cfg.log_dir}    PID files {cfg.run_dir}", "", "Try:"]
    if gateway is not None and serving:
        model = serving[0].env["SERVING_MODEL"]
        lines.append(f"  curl -s {gateway.url}/models/{model}/readyz")
        lines.append(f"  curl -s {gateway.url}/v1/models/{model}")
    elif serving:
        lines.append(f"  curl -s {serving[0].url}/healthz")
    lines.append(f"  psql {cfg.db_url('serving')} -c "
                 "\"SELECT snapshot_date, count(*) FROM features.customer_daily GROUP BY 1 ORDER BY 1 DESC LIMIT 3\"")
    if cfg.wants("airflow"):
        lines += [
            f"  TOKEN=$(curl -s -X POST {cfg.airflow_url}/auth/token -H 'Content-Type: application/json' \\",
            f"          -d '{{\"username\": \"{cfg.admin_user}\", \"password\": \"{cfg.admin_password}\"}}' \\",
            "          | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
            f"  curl -s -H \"Authorization: Bearer $TOKEN\" {cfg.airflow_url}/api/v2/dags",
            f"  source {cfg.home / 'stack.env'} && airflow dags list   # the Airflow CLI against this stack",
        ]
    lines += ["  make demo     # seed features, train, predict, show results", "  make status | make down"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.up", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "restart-serving"], nargs="?", default="up")
    parser.add_argument("--model", action="append", help="restart-serving: only this model's replicas (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = StackConfig.from_env()
        if args.command == "up":
            began = time.monotonic()
            services = up(cfg)
            print(summary(cfg, services))
            print(f"\n(up in {time.monotonic() - began:.0f}s)")
        elif args.command == "down":
            down(cfg)
        elif args.command == "restart-serving":
            from stack.rolling import RollingError, rolling_restart

            try:
                rolling_restart(cfg, models=args.model)
            except RollingError as exc:
                raise StackError(str(exc)) from exc
        else:
            print(format_table(status_rows(cfg), ("SERVICE", "PID", "PORT", "HEALTH", "URL")))
    except (StackError, ConfigError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
