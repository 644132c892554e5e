"""The gateway: nginx in front of every model's gunicorn replicas, its config generated from models.yaml.

One entry point (STACK_SERVING_PORT, default 8000) routes by model:

    /v1/models/<m>, /v1/models/<m>/...      that model's replicas (lookup, predict, jobs submit)
    /v2/models/<m>, /v2/models/<m>/...      that model's replicas (Open Inference Protocol)
    /models/<m>/<path>                      that model's replicas with the prefix stripped: MLflow's
                                            /invocations, /ping, /version, and /healthz, /readyz, /metrics
    /v1/jobs/<id>                           any replica of any model: job ids are global and every replica
                                            reads the one PostgreSQL queue
    /gateway/health                         nginx itself; /gateway/status: stub_status (loopback only)

MLflow's /invocations names no model, so it gets a path prefix per model rather than a port per model: one
published port (one TLS certificate, one firewall rule) serves every model, and an MLflow client only needs
its base URL set to .../models/<m>.

Why nginx and these settings:
- Buffering: nginx reads a whole request body before it picks a replica, and a whole response before the
  client reads it, so slow or stalled clients hold nginx connections (cheap, event-driven), never a sync
  gunicorn worker. Client timeouts drop them; the body limit (SERVING_MAX_BODY_BYTES, as the app's) answers 413
  at the edge in each protocol's error shape.
- Retries: a request that fails on a replica (refused, reset, 502/503/504) is retried once more on another only
  where it has no side effect: lookups, predict, /invocations, /v2 infer, job reads; a job submit only when it
  carries an Idempotency-Key (the queue then returns the same job). nginx never re-sends a POST unless told to
  (`non_idempotent`), so submits without a key sit in their own location without it.
- Keep-alive to the replicas (upstream keepalive, HTTP/1.1): used by threaded gunicorn workers
  (SERVING_THREADS>1); sync workers close after each response, which behind a buffering proxy costs a loopback
  connect per request and nothing else.
- One nginx worker process: on 2 cores the replicas need the CPU; one event loop proxies far more requests per
  second than two cores of gunicorn can answer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stack.config import StackConfig
from stack.debian import PackageError, ensure_binary

CONF_NAME = "nginx.conf"
# What a model name must look like to be put in a location (models.yaml names are identifiers anyway).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class GatewayError(RuntimeError):
    pass


@dataclass(frozen=True)
class Replica:
    model: str
    index: int  # from 0
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"serving-{self.model}-{self.index + 1}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def replicas(cfg: StackConfig, models: list[str]) -> list[Replica]:
    return [Replica(model, r, cfg.host, cfg.replica_port_of(i, r))
            for i, model in enumerate(models) for r in range(cfg.replicas)]


def max_body_bytes(env: dict[str, str] | None = None) -> int:
    """The app's body limit (serving/config.py), enforced at the edge as well."""
    raw = (env if env is not None else os.environ).get("SERVING_MAX_BODY_BYTES") or "1048576"
    return int(raw) if raw.isdigit() else 1_048_576


def _json(value: object) -> str:
    """A JSON body as an nginx single-quoted string (no quote or backslash can break out)."""
    text = json.dumps(value, separators=(",", ":"))
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _too_large(limit: int) -> dict[str, str]:
    """The 413 body per protocol: the platform's own shape (/v1), OIP's {"error"} (/v2), MLflow's."""
    message = f"request body larger than {limit} bytes (SERVING_MAX_BODY_BYTES)"
    return {
        "v1": _json({"error": {"code": "payload_too_large", "message": message, "column": None, "row": None}}),
        "v2": _json({"error": message}),
        "mlflow": _json({"error_code": "BAD_REQUEST", "message": message}),
    }


def render(upstreams: dict[str, list[str]], listen: str, workdir: Path, access_log: str, *,
           down: Iterable[str] = (), status_allow: Iterable[str] = ("127.0.0.1", "::1"),
           status_listen: str | None = None, passthrough: dict[str, str] | None = None,
           body_limit: int = 1_048_576, read_timeout_s: int = 60, daemon: bool = False) -> str:
    """The nginx config: `upstreams` maps model -> replica addresses (host:port); `down` names addresses to
    take out of rotation (a rolling restart drains them first). `status_listen`: stub_status on a listener of
    its own (containers: a port that is not published) instead of a loopback-only location. `passthrough`:
    listen -> host:port proxied as is (the container deployment's Airflow UI, which has its own login)."""
    for model in upstreams:
        if not _SAFE_NAME.match(model):
            raise GatewayError(f"model name {model!r} cannot be routed (letters, digits, _ . - only)")
    down = set(down)
    tmp = workdir / "tmp"
    too_large = _too_large(body_limit)
    allow = "".join(f"            allow {a};\n" for a in status_allow)
    out: list[str] = [f"""# Generated by stack/gateway.py from models.yaml: do not edit (make up rewrites it).
worker_processes 1;
{'' if daemon else 'daemon off;'}
pid {workdir / 'nginx.pid'};
error_log stderr warn;
events {{ worker_connections 4096; }}

http {{
    client_body_temp_path {tmp / 'body'};
    proxy_temp_path {tmp / 'proxy'};
    fastcgi_temp_path {tmp / 'fastcgi'};
    uwsgi_temp_path {tmp / 'uwsgi'};
    scgi_temp_path {tmp / 'scgi'};
    server_tokens off;
    default_type application/json;

    # Request id: the caller's when it is safe to log and echo (the app's own rule), else nginx's own.
    map $http_x_request_id $rid {{
        "~^[A-Za-z0-9._:-]{{1,128}}$" $http_x_request_id;
        default $request_id;
    }}
    log_format gateway escape=json '{{"ts":"$time_iso8601","request_id":"$rid","remote":"$remote_addr",'
        '"method":"$request_method","uri":"$request_uri","status":$status,"bytes":$body_bytes_sent,'
        '"request_time":$request_time,"upstream":"$upstream_addr","upstream_status":"$upstream_status",'
        '"upstream_time":"$upstream_response_time","upstream_connect":"$upstream_connect_time"}}';
    access_log {access_log} gateway;

    # Slow clients wait in nginx, never in a gunicorn worker.
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 10s;
    keepalive_timeout 30s;
    keepalive_requests 10000;
    client_max_body_size {body_limit};
    client_body_buffer_size 128k;
    proxy_request_buffering on;
    proxy_buffering on;
    proxy_buffers 32 16k;

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Request-ID $rid;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_hide_header X-Request-ID;
    add_header X-Request-ID $rid always;
    proxy_connect_timeout 2s;
    proxy_send_timeout 10s;
    proxy_read_timeout {read_timeout_s}s;
    # Default: no retry (a request with side effects). Side-effect-free locations below opt in.
    proxy_next_upstream off;
"""]
    every: list[str] = []
    for model, addresses in upstreams.items():
        out.append(f"    upstream serving_{model} {{\n")
        for addr in addresses:
            out.append(f"        server {addr} max_fails=1 fail_timeout=2s{' down' if addr in down else ''};\n")
            every.append(addr)
        out.append("        keepalive 32;\n    }\n")
    out.append("    upstream serving_any {\n")
    for addr in every:
        out.append(f"        server {addr} max_fails=1 fail_timeout=2s{' down' if addr in down else ''};\n")
    out.append("        keepalive 32;\n    }\n")

    status_location = "" if status_listen else (
        "        location = /gateway/status {\n            stub_status;\n            default_type text/plain;\n"
        f"{allow}            deny all;\n        }}\n")
    retry = ("proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent; "
             "proxy_next_upstream_tries 3; proxy_next_upstream_timeout 15s;")
    retry_get = ("proxy_next_upstream error timeout http_502 http_503 http_504; "
                 "proxy_next_upstream_tries 3; proxy_next_upstream_timeout 15s;")
    out.append(f"""
    server {{
        listen {listen} reuseport backlog=4096;
        location @too_large_v1 {{ add_header X-Request-ID $rid always; return 413 {too_large['v1']}; }}
        location @too_large_v2 {{ add_header X-Request-ID $rid always; return 413 {too_large['v2']}; }}
        location @too_large_mlflow {{ add_header X-Request-ID $rid always; return 413 {too_large['mlflow']}; }}
        # nginx's own liveness (each model's: /models/<m>/healthz and /models/<m>/readyz)
        location = /gateway/health {{ return 200 '{{"status":"ok"}}'; }}
        location = /healthz {{ return 200 '{{"status":"ok"}}'; }}
{status_location}
        location / {{
            return 404 {_json({"error": {"code": "not_found", "message": "no route at the gateway: use /v1/models/"
                                         "<model>/..., /v2/models/<model>/..., /models/<model>/invocations or "
                                         "/v1/jobs/<id>", "column": None, "row": None}})};
        }}
        # Job reads: any replica of any model answers (ids are global, the queue is shared); GET retries,
        # DELETE (cancel) does not.
        location ^~ /v1/jobs/ {{
            error_page 413 = @too_large_v1;
            {retry_get}
            proxy_pass http://serving_any;
        }}
""")
    for model in upstreams:
        up = f"serving_{model}"
        out.append(f"""
        # --- {model} ---
        location = /v1/models/{model} {{ error_page 413 = @too_large_v1; {retry} proxy_pass http://{up}; }}
        location ^~ /v1/models/{model}/ {{ error_page 413 = @too_large_v1; {retry} proxy_pass http://{up}; }}
        # A submit queues a job: retried on another replica only with an Idempotency-Key (then the queue
        # answers the same job). The key's presence picks the location (nginx cannot vary retries by header).
        location = /v1/models/{model}/jobs {{
            error_page 413 = @too_large_v1;
            if ($http_idempotency_key) {{ rewrite ^ /@idempotent/v1/models/{model}/jobs last; }}
            proxy_pass http://{up};
        }}
        location = /@idempotent/v1/models/{model}/jobs {{
            internal;
            error_page 413 = @too_large_v1;
            rewrite ^ /v1/models/{model}/jobs break;
            {retry}
            proxy_pass http://{up};
        }}
        location = /v2/models/{model} {{ error_page 413 = @too_large_v2; {retry} proxy_pass http://{up}; }}
        location ^~ /v2/models/{model}/ {{ error_page 413 = @too_large_v2; {retry} proxy_pass http://{up}; }}
        location ^~ /models/{model}/ {{
            error_page 413 = @too_large_mlflow;
            {retry}
            proxy_pass http://{up}/;
        }}
""")
    out.append("    }\n")
    if status_listen:
        out.append(f"    server {{\n        listen {status_listen};\n"
                   "        location = /gateway/status { stub_status; default_type text/plain; }\n"
                   "        location / { return 404; }\n    }\n")
    for i, (where, target) in enumerate((passthrough or {}).items()):
        out.append(f"    upstream passthrough_{i} {{ server {target}; keepalive 8; }}\n"
                   f"    server {{\n        listen {where};\n        client_max_body_size 10m;\n"
                   f"        location / {{ proxy_pass http://passthrough_{i}; }}\n    }}\n")
    out.append("}\n")
    return "".join(out)


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


def write_config(cfg: StackConfig, models: list[str], down: Iterable[str] = ()) -> tuple[Path, bool]:
    """Render the local gateway's config into the stack's folder; returns (path, changed)."""
    upstreams: dict[str, list[str]] = {}
    for rep in replicas(cfg, models):
        upstreams.setdefault(rep.model, []).append(rep.address)
    read_timeout = int(os.environ.get("SERVING_TIMEOUT_S") or "60")
    text = render(upstreams, f"{cfg.host}:{cfg.serving_port}", cfg.gateway_dir, str(access_log_path(cfg)),
                  down=down, body_limit=max_body_bytes(), read_timeout_s=read_timeout)
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


def reload(master_pid: int, timeout: float = 15.0) -> None:
    """SIGHUP: nginx re-reads its config and replaces its workers gracefully. Returns once only new workers
    are left: the old ones finish the requests they hold (with the old config's replicas) before they exit, so
    after this no request can still go to a replica the new config took out of rotation."""
    import psutil

    def workers() -> tuple[set[int], bool]:
        try:
            children = psutil.Process(master_pid).children()
            titles = [(c.pid, " ".join(c.cmdline())) for c in children if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess as exc:
            raise GatewayError(f"gateway (pid {master_pid}) is not running") from exc
        except psutil.Error:
            return set(), True
        return {pid for pid, _ in titles}, any("shutting down" in title for _, title in titles)

    before, _ = workers()
    os.kill(master_pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current, draining = workers()
        if current and not current & before and not draining:
            return
        time.sleep(0.05)
    raise GatewayError(f"gateway (pid {master_pid}): old workers still busy {timeout:.0f}s after a reload")


def start_standalone(upstreams: dict[str, list[str]], port: int, workdir: Path,
                     log_path: Path) -> subprocess.Popen:
    """An nginx gateway of its own (benches): config in `workdir`, listening on 127.0.0.1:`port`; returns once
    it answers. Stop it with stack.services.stop_process."""
    from stack.services import stop_process, wait_http

    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for folder in (workdir, workdir / "tmp", *(workdir / "tmp").iterdir()):
            folder.chmod(0o777 if folder != workdir else 0o755)
    conf = workdir / CONF_NAME
    conf.write_text(render(upstreams, f"127.0.0.1:{port}", workdir, str(workdir / "access.log"),
                           body_limit=max_body_bytes()))
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

def compose_config(models: list[str], workdir: Path, addresses: dict[str, list[str]] | None = None) -> str:
    """docker-compose.yaml's gateway: each model's service name resolves to all its replicas (compose's DNS),
    stub_status on :8081 (not published; Prometheus' nginx exporter scrapes it), Airflow's UI on :8080.
    `addresses`: service name -> the IPs to use instead of the name (stack/compose/resolver.py re-resolves)."""
    def at(service: str, port: int) -> list[str]:
        return [f"{ip}:{port}" for ip in (addresses or {}).get(service) or [service]]

    return render({m: at(f"serving-{m}", 8000) for m in models}, "0.0.0.0:8000", workdir, "/dev/stdout",
                  status_listen="0.0.0.0:8081", passthrough={"0.0.0.0:8080": at("airflow-apiserver", 8080)[0]},
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
