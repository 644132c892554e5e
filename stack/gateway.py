"""The gateway's processes: nginx in front of every model's gunicorn replicas, its config (stack/gateway_conf.py,
where the routes and why are described) written from models.yaml and what the stack runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from stack.config import StackConfig
from stack.debian import PackageError, ensure_binary
from stack.gateway_conf import GatewayError, Split, Upstreams, render

__all__ = ["GatewayError", "Replica", "Split", "Upstreams", "render", "replicas", "upstreams"]

CONF_NAME = "nginx.conf"
SPLITS_NAME = "rollout.json"  # the canary shares the gateway applies (written by stack/rollout.py)


@dataclass(frozen=True)
class Replica:
    model: str
    index: int  # from 0
    host: str
    port: int
    socket: Path | None = None  # a Unix socket it listens on too (the gateway's way in), None: TCP only
    # "serving" (predict, lookup, OIP, MLflow), "jobs" (threaded: the job routes) or "canary" (the sync routes'
    # canary share: SERVING_MODEL_REF=canary)
    kind: str = "serving"
    grpc: str | None = None  # its gRPC server's host:port, when it runs one

    @property
    def name(self) -> str:
        return f"serving-{self.model}-{'' if self.kind == 'serving' else self.kind + '-'}{self.index + 1}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def upstream(self) -> str:
        """How the gateway reaches it."""
        return f"unix:{self.socket}" if self.socket else self.address


def replicas(cfg: StackConfig, models: list[str]) -> list[Replica]:
    """Every model's sync replicas, then every model's job replicas (STACK_JOB_REPLICAS each)."""
    out = [_replica(cfg, model, r, cfg.replica_port_of(i, r), "serving", i)
           for i, model in enumerate(models) for r in range(cfg.replicas)]
    out += [_replica(cfg, model, r, cfg.job_port_of(i, r, len(models)), "jobs", i)
            for i, model in enumerate(models) for r in range(cfg.job_replicas)]
    return out


def canary_replicas(cfg: StackConfig, models: list[str]) -> list[Replica]:
    """Every model's canary replicas (STACK_CANARY_REPLICAS each): idle until the registry names a canary."""
    return [_replica(cfg, model, r, cfg.canary_port_of(i, r, len(models)), "canary", i)
            for i, model in enumerate(models) for r in range(cfg.canary_replicas)]


def _replica(cfg: StackConfig, model: str, index: int, port: int, kind: str, model_index: int) -> Replica:
    rep = Replica(model, index, cfg.host, port, kind=kind)
    socket = cfg.run_dir / f"{rep.name}.sock" if cfg.unix_sockets else None
    # The sync replicas serve gRPC too, each on its own loopback port (SERVING_GRPC_PORT, laid out by
    # StackConfig.replica_grpc_port_of); the job replicas do not.
    grpc = f"{cfg.host}:{cfg.replica_grpc_port_of(model_index, index)}" if kind == "serving" else None
    return Replica(model, index, cfg.host, port, socket, kind, grpc)


def upstreams(reps: list[Replica]) -> dict[str, Upstreams]:
    out: dict[str, Upstreams] = {}
    for rep in reps:
        up = out.setdefault(rep.model, Upstreams([]))
        {"jobs": up.jobs, "canary": up.canary}.get(rep.kind, up.http).append(rep.upstream)
        if rep.grpc:
            up.grpc.append(rep.grpc)
    return out


def server_identity() -> tuple[str, str]:
    """(name, version) of the platform, answered at /v2 as the replicas do (one definition: serving/__init__)."""
    from serving import SERVER_NAME, SERVER_VERSION

    return SERVER_NAME, SERVER_VERSION


def max_body_bytes(env: dict[str, str] | None = None) -> int:
    """The app's body limit (serving/config.py), enforced at the edge as well."""
    raw = (env if env is not None else os.environ).get("SERVING_MAX_BODY_BYTES") or "1048576"
    return int(raw) if raw.isdigit() else 1_048_576


# --- the local gateway process -----------------------------------------------------------------------------

def ensure_nginx() -> str:
    """The nginx binary; installs the Debian package nginx-light with apt-get when it is missing."""
    try:
        return ensure_binary("nginx", "nginx-light", extra_paths=("/usr/sbin/nginx", "/usr/local/sbin/nginx"))
    except PackageError as exc:
        raise GatewayError(str(exc)) from exc


def config_path(cfg: StackConfig) -> Path:
    return cfg.gateway_dir / CONF_NAME


def access_log_path(cfg: StackConfig) -> Path:
    return cfg.log_dir / "gateway-access.log"


def splits_path(cfg: StackConfig) -> Path:
    return cfg.gateway_dir / SPLITS_NAME


def read_splits(cfg: StackConfig) -> dict[str, Split]:
    """The canary shares last applied (stack/rollout.py): kept beside the config so that `make up` and rolling
    restarts, which rewrite it without asking the registry, keep the split as it is."""
    import json

    try:
        data = json.loads(splits_path(cfg).read_text())
        return {m: Split(float(v["percent"]), str(v.get("sticky", "none"))) for m, v in data.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def write_splits(cfg: StackConfig, splits: Mapping[str, Split]) -> None:
    import json

    cfg.gateway_dir.mkdir(parents=True, exist_ok=True)
    tmp = splits_path(cfg).with_suffix(".tmp")
    tmp.write_text(json.dumps({m: {"percent": s.percent, "sticky": s.sticky} for m, s in splits.items()}))
    tmp.replace(splits_path(cfg))


def write_config(cfg: StackConfig, models: list[str], down: Iterable[str] = ()) -> tuple[Path, bool]:
    """Render the local gateway's config into the stack's folder; returns (path, changed). `down`: replica
    addresses (as the gateway reaches them, Replica.upstream) out of rotation."""
    read_timeout = int(os.environ.get("SERVING_TIMEOUT_S") or "60")
    reps = replicas(cfg, models) + canary_replicas(cfg, models)
    text = render(upstreams(reps), f"{cfg.host}:{cfg.serving_port}", cfg.gateway_dir,
                  str(access_log_path(cfg)), down=down, body_limit=max_body_bytes(), read_timeout_s=read_timeout,
                  grpc_listen=f"{cfg.host}:{cfg.grpc_port}", server=server_identity(), splits=read_splits(cfg))
    path = config_path(cfg)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (cfg.gateway_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # nginx's workers run as nobody: let them write their temp files
        for folder in (cfg.gateway_dir / "tmp", *(cfg.gateway_dir / "tmp").iterdir()):
            folder.chmod(0o777)
    changed = not path.exists() or path.read_text() != text
    if changed:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path, changed


def nginx_argv(cfg: StackConfig, binary: str) -> list[str]:
    return [binary, "-e", "stderr", "-p", str(cfg.gateway_dir), "-c", str(config_path(cfg))]


def check_config(cfg: StackConfig, binary: str) -> None:
    result = subprocess.run([*nginx_argv(cfg, binary), "-t", "-q"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GatewayError(f"nginx rejects {config_path(cfg)}: {result.stderr.strip()[-800:]}")


def nginx_workers(master_pid: int) -> tuple[set[int], bool]:
    """The pids of nginx's live workers, and whether any of them is an old one still shutting down."""
    import psutil

    try:
        children = psutil.Process(master_pid).children()
    except psutil.NoSuchProcess as exc:
        raise GatewayError(f"gateway (pid {master_pid}) is not running") from exc
    except psutil.Error:
        return set(), True
    titles = []
    for child in children:
        try:  # an old worker may exit between the listing and this look: then it is simply gone
            if child.status() != psutil.STATUS_ZOMBIE:
                titles.append((child.pid, " ".join(child.cmdline())))
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:
            return set(), True
    return {pid for pid, _ in titles}, any("shutting down" in title for _, title in titles)


def reload(master_pid: int, timeout: float = 15.0) -> None:
    """SIGHUP: nginx re-reads its config and replaces its workers gracefully. Returns once only new workers
    are left: the old ones finish the requests they hold (with the old config's replicas) before they exit, so
    after this no request can still go to a replica the new config took out of rotation."""
    before, _ = nginx_workers(master_pid)
    os.kill(master_pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current, draining = nginx_workers(master_pid)
        if current and not current & before and not draining:
            return
        time.sleep(0.05)
    raise GatewayError(f"gateway (pid {master_pid}): old workers still busy {timeout:.0f}s after a reload")


def standalone_config(routes: Mapping[str, Upstreams | list[str]], port: int, workdir: Path,
                      grpc_port: int | None = None, read_timeout_s: int = 60,
                      splits: Mapping[str, Split] | None = None) -> Path:
    """Write a standalone gateway's config (start_standalone's; rewritten, then reload(), to move a split)."""
    conf = workdir / CONF_NAME
    conf.write_text(render(routes, f"127.0.0.1:{port}", workdir, str(workdir / "access.log"),
                           body_limit=max_body_bytes(), server=server_identity(), read_timeout_s=read_timeout_s,
                           grpc_listen=f"127.0.0.1:{grpc_port}" if grpc_port else None, splits=splits))
    return conf


def start_standalone(routes: Mapping[str, Upstreams | list[str]], port: int, workdir: Path,
                     log_path: Path, grpc_port: int | None = None, read_timeout_s: int = 60,
                     splits: Mapping[str, Split] | None = None) -> subprocess.Popen:
    """An nginx gateway of its own (benches, tests): config in `workdir`, listening on 127.0.0.1:`port` (and
    `grpc_port` for gRPC), `splits` its canary shares; returns once it answers. Stop it with
    stack.services.stop_process."""
    from stack.services import stop_process, wait_http

    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for folder in (workdir, workdir / "tmp", *(workdir / "tmp").iterdir()):
            folder.chmod(0o777 if folder != workdir else 0o755)
    conf = standalone_config(routes, port, workdir, grpc_port, read_timeout_s, splits)
    binary = ensure_nginx()
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen([binary, "-e", "stderr", "-p", str(workdir), "-c", str(conf)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/gateway/health", 30, proc, "gateway")
    except Exception:
        stop_process(proc)
        raise
    return proc


# --- the container deployment ------------------------------------------------------------------------------

COMPOSE_GRPC_PORT = 8001  # docker-compose.yaml: each serving replica's SERVING_GRPC_PORT, the gateway's gRPC port


def compose_config(models: list[str], workdir: Path, addresses: dict[str, list[str]] | None = None) -> str:
    """docker-compose.yaml's gateway: each model's service name resolves to all its replicas (compose's DNS), its
    job routes to serving-<m>-jobs, gRPC on :8001 to the replicas' :8001, stub_status on :8081 (not published;
    Prometheus' nginx exporter scrapes it), Airflow's UI on :8080. `addresses`: service name -> the IPs to use
    instead of the name (stack/compose/resolver.py re-resolves)."""
    def at(service: str, port: int) -> list[str]:
        return [f"{ip}:{port}" for ip in (addresses or {}).get(service) or [service]]

    return render({m: Upstreams(at(f"serving-{m}", 8000), at(f"serving-{m}-jobs", 8000),
                                at(f"serving-{m}", COMPOSE_GRPC_PORT)) for m in models},
                  "0.0.0.0:8000", workdir, "/dev/stdout",
                  status_listen="0.0.0.0:8081", passthrough={"0.0.0.0:8080": at("airflow-apiserver", 8080)[0]},
                  grpc_listen=f"0.0.0.0:{COMPOSE_GRPC_PORT}", server=server_identity(),
                  body_limit=max_body_bytes(), read_timeout_s=int(os.environ.get("SERVING_TIMEOUT_S") or "60"))


def main(argv: list[str] | None = None) -> int:
    """`python -m stack.gateway serve`: the container's entry point (write the config, exec nginx);
    `python -m stack.gateway render`: print it."""
    import argparse

    from scoring.spec import load_specs

    parser = argparse.ArgumentParser(prog="python -m stack.gateway")
    parser.add_argument("command", choices=["serve", "render"])
    parser.add_argument("--workdir", default="/tmp/gateway")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    text = compose_config([n for n, spec in load_specs().items() if spec.serving.online], workdir)
    if args.command == "render":
        print(text)
        return 0
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    (workdir / CONF_NAME).write_text(text)
    binary = ensure_nginx()
    os.execv(binary, [binary, "-e", "stderr", "-p", str(workdir), "-c", str(workdir / CONF_NAME)])
    return 1  # not reached


if __name__ == "__main__":
    import sys

    sys.exit(main())
