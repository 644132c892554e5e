"""The gateway's nginx config, rendered from the replicas the stack (or compose) runs.

One REST entry point (STACK_SERVING_PORT, default 8000) routes by model and by protocol:

    /v1/models/<m>, /v1/models/<m>/...      that model's replicas (lookup, predict)
    /v1/models/<m>/jobs, .../jobs/...       that model's job replicas (threaded; the sync ones when it has none)
    /v1/jobs/<id>                           any job replica of any model: job ids are global and every replica
                                            reads the one PostgreSQL queue
    /v2/health/live, /v2/health/ready, /v2  the Open Inference server routes, answered by nginx itself (ready:
                                            every model has a ready replica, asked of the replicas)
    /v2/models/<m>, /v2/models/<m>/...      that model's replicas (metadata, ready, infer, versions/<v>/...)
    /models/<m>/<path>                      that model's replicas with the prefix stripped: MLflow's
                                            /invocations, /ping, /version, and /healthz, /readyz, /metrics
    /endpoints/<m>/invocations              the same /invocations where MLflow's deployments client posts
    /gateway/health                         nginx itself; /gateway/status: stub_status (loopback only)

Every answer nginx makes itself (unknown route or model, 413, 502/503/504 when no replica answers) has the error
shape of the protocol the path belongs to: /v2 the Open Inference `{"error": "..."}`, /models/<m>/ and
/endpoints/<m>/ MLflow's `{"error_code", "message"}`, everything else the platform's
`{"error": {"code", "message", ...}}`. The routes of one protocol sit in one prefix location, so its error
pages are declared once and inherited.

The gRPC entry point (STACK_GRPC_PORT, default 8001; HTTP/2) carries the KServe v2 GRPCInferenceService. Its
model name is inside the protobuf message, which nginx cannot read, so a client names the model in the request
metadata `model` (tritonclient.grpc: `headers={"model": "churn"}`; a stub: `metadata=(("model", "churn"),)`), one
port for every model as on the REST side. With a single served model the metadata may be left out. Server-level
RPCs without it (ServerLive, ServerReady, ServerMetadata) go to any replica; a model RPC without it, or naming a
model not served, is answered NOT_FOUND by nginx with a message saying how to route. nginx's own failures are
gRPC statuses too (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), in a trailers-only response.

MLflow's /invocations names no model, so it gets a path prefix per model rather than a port per model: one
published port (one TLS certificate, one firewall rule) serves every model, and an MLflow client only needs
its base URL set to .../models/<m>.

Why nginx and these settings:
- Buffering: nginx reads a whole request body before it picks a replica, and a whole response before the
  client reads it, so slow or stalled clients hold nginx connections (cheap, event-driven), never a sync
  gunicorn worker. Client timeouts drop them; the body limit (SERVING_MAX_BODY_BYTES, as the app's) answers 413
  at the edge.
- Retries: a request that fails on a replica (refused, reset, 502/503/504) is retried once more on another only
  where it has no side effect: lookups, predict, /invocations, /v2 infer, job reads; a job submit only when it
  carries an Idempotency-Key (the queue then returns the same job). nginx never re-sends a POST unless told to
  (`non_idempotent`), so submits without a key sit in their own location without it.
- Replica addresses are `host:port` or `unix:/path` (the local stack's replicas listen on both; nginx uses the
  socket: no TCP handshake and no TIME_WAIT per request to a sync worker that closes each connection).
- Keep-alive to the replicas (upstream keepalive, HTTP/1.1): used by threaded gunicorn workers (the job
  replicas); sync workers close after each response.
- One nginx worker process: on 2 cores the replicas need the CPU; one event loop proxies far more requests per
  second than two cores of gunicorn can answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# What a model name must look like to be put in a location (models.yaml names are identifiers anyway); the same
# characters are the only ones echoed back in an unknown model's message (always valid JSON).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_NAME_CLASS = "[A-Za-z0-9_.-]+"
# The Open Inference extensions every replica speaks (serving/protocols/oip.py; tests compare the two /v2 answers)
SERVER_EXTENSIONS = ("binary_tensor_data",)

_V1_CODES = {404: "not_found", 413: "payload_too_large", 502: "bad_gateway", 503: "unavailable",
             504: "gateway_timeout"}
_MLFLOW_CODES = {404: "RESOURCE_DOES_NOT_EXIST", 413: "BAD_REQUEST", 502: "TEMPORARILY_UNAVAILABLE",
                 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
# gRPC status codes for the HTTP statuses nginx makes itself
_GRPC_CODES = {404: 5, 413: 8, 502: 14, 503: 14, 504: 4}  # NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE
GATEWAY_STATUSES = (413, 502, 503, 504)


class GatewayError(RuntimeError):
    pass


@dataclass(frozen=True)
class Upstreams:
    """One model's replica addresses (`host:port` or `unix:/path`): `http` answers predict, lookup, OIP and
    MLflow; `jobs` the job routes (empty: the `http` replicas); `grpc` the replicas' gRPC servers (empty: the
    model has no gRPC route)."""

    http: list[str]
    jobs: list[str] = field(default_factory=list)
    grpc: list[str] = field(default_factory=list)
    canary: list[str] = field(default_factory=list)  # replicas serving the `canary` alias (SERVING_MODEL_REF)

    @property
    def job_replicas(self) -> list[str]:
        return self.jobs or self.http

    @property
    def job_backups(self) -> list[str]:
        """While a model's job replicas are all down (a rolling restart, a crash) its sync replicas take the job
        routes: the same app, only slower at many small submits."""
        return self.http if self.jobs else []


@dataclass(frozen=True)
class Split:
    """A model's canary share at the gateway (stack/rollout.py writes it from the registry): `percent` of its
    sync routes (predict, lookup, /v2, MLflow; not the job routes, which the champion's async worker scores) go to
    its canary replicas, drawn per request, or per entity (X-Entity-ID) or caller (Authorization, else the
    client's address) for a day when `sticky` says so."""

    percent: float
    sticky: str = "none"


# nginx's split_clients hashes its key (MurmurHash2) onto the percentages: the request id is random per request;
# a sticky key adds the UTC day, so an entity or caller keeps its version for a day, then is drawn again.
_SPLIT_KEYS = {"none": "${request_id}", "entity": "${rollout_entity}:${rollout_day}",
               "caller": "${rollout_caller}:${rollout_day}"}
_SPLIT_MAPS = """    # canary split keys (stack/gateway_conf.py Split)
    map $time_iso8601 $rollout_day { "~^(?<day>[0-9-]{10})" $day; default ""; }
    map $http_x_entity_id $rollout_entity { "" $request_id; default $http_x_entity_id; }
    map $http_authorization $rollout_caller { "" $remote_addr; default $http_authorization; }
"""


def _split(model: str, up: Upstreams, split: Split | None, down: set[str]) -> str:
    """The canary's upstream (the champion's replicas as its backups: a canary replica that fails or is down
    sends its requests to the champion, never an error to the client) and the split_clients choosing between
    them into $pool_<model>; "" when the model has no active split."""
    if split is None or split.percent <= 0 or not up.canary:
        return ""
    if split.sticky not in _SPLIT_KEYS:
        raise GatewayError(f"model {model!r}: unknown canary stickiness {split.sticky!r}")
    share = f"        {min(split.percent, 100):.2f}% canary_{model};\n" if split.percent < 100 else ""
    rest = f"        * serving_{model};\n" if split.percent < 100 else f"        * canary_{model};\n"
    return (_upstream(f"canary_{model}", up.canary, down, up.http)
            + f"    split_clients \"{model}:{_SPLIT_KEYS[split.sticky]}\" $pool_{model} {{\n{share}{rest}    }}\n")


def error_body(protocol: str, status: int, message: str) -> dict[str, object]:
    """The error object of `protocol` (v1: the platform's, v2: Open Inference, mlflow: MLflow's scoring server)."""
    if protocol == "v2":
        return {"error": message}
    if protocol == "mlflow":
        return {"error_code": _MLFLOW_CODES[status], "message": message}
    return {"error": {"code": _V1_CODES[status], "message": message, "column": None, "row": None}}


def quoted(value: object) -> str:
    """A JSON body as an nginx single-quoted string (no quote or backslash can break out)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# A request without side effects that a replica has not begun to answer in this long is tried on another (at
# most RETRY_TRIES in all, within RETRY_BUDGET_S). The compose test saw why: a replica crashed and restarted in
# place listens again before its worker has loaded the model, and a lookup sent to it in that moment waited
# 20 s in its backlog. The app's own bounds keep such requests far below it (1000 rows, a 2 s statement timeout).
RETRY_READ_TIMEOUT_S, RETRY_TRIES, RETRY_BUDGET_S = 10, 3, 15


def _retry_read_timeout(read_timeout_s: int) -> int:
    return min(RETRY_READ_TIMEOUT_S, read_timeout_s)


def _gateway_messages(body_limit: int, read_timeout_s: int) -> dict[int, str]:
    retried = _retry_read_timeout(read_timeout_s)
    waited = (f"within {read_timeout_s}s" if retried == read_timeout_s else
              f"in time ({retried}s a try for requests without side effects, {read_timeout_s}s for the others)")
    return {413: f"request body larger than {body_limit} bytes (SERVING_MAX_BODY_BYTES)",
            502: "no replica answered (refused, reset or failed): retry in a few seconds",
            503: "no replica is available: retry in a few seconds",
            504: f"no replica answered {waited}"}


def _error_pages(protocol: str) -> str:
    return " ".join(f"error_page {s} = @{protocol}_{s};" for s in GATEWAY_STATUSES)


def _servers(addresses: Iterable[str], down: set[str], flag: str = "") -> str:
    return "".join(f"        server {a} max_fails=1 fail_timeout=2s{flag}{' down' if a in down else ''};\n"
                   for a in addresses)


def _upstream(name: str, addresses: list[str], down: set[str], backups: Iterable[str] = (),
              keepalive: int = 32) -> str:
    """An upstream group; `backups` take requests only while every one of `addresses` is down or failing."""
    servers = _servers(addresses, down) + _servers([b for b in backups if b not in addresses], down, " backup")
    return f"    upstream {name} {{\n{servers}        keepalive {keepalive};\n    }}\n"


def _unknown_model(protocol: str, prefix: str, models: list[str]) -> str:
    """A nested regex location answering 404 for a model name this gateway does not route, naming it when it is
    made of safe characters (the capture can then only produce valid JSON)."""
    served = ", ".join(models) or "none"
    body = quoted(error_body(protocol, 404, f"unknown model 'MODEL': this gateway serves {served}"))
    return (f"            location ~ ^{re.escape(prefix)}({_NAME_CLASS})(/|$) {{ "
            f"return 404 {body.replace('MODEL', '$1')}; }}\n")


def _no_route(protocol: str, hint: str) -> str:
    return f"return 404 {quoted(error_body(protocol, 404, f'no route at the gateway: {hint}'))};"


def _readiness(models: Mapping[str, Upstreams]) -> tuple[str, str]:
    """/v2/health/ready: 200 when every model has a ready replica. nginx asks each model's replicas in turn
    (auth_request to its /v2/models/<m>/ready, the next replica tried on a 503), chained through named locations
    (try_files on a path that never exists moves to the next, which runs its own access check). The first model
    without a ready replica answers 503 naming it. Returns (the location in /v2/, the server-level chain)."""
    names = list(models)
    if not names:
        return "            location = /v2/health/ready { return 200 '{\"ready\":true}'; }\n", ""
    inner, chain = [], []
    for k, model in enumerate(names):
        tries = max(1, len(models[model].http))
        inner.append(f"""            location = /v2/@ready/{model} {{
                internal;
                proxy_pass http://serving_{model}/v2/models/{model}/ready;
                proxy_pass_request_body off;
                proxy_set_header Content-Length "";
                proxy_next_upstream error timeout http_502 http_503 http_504;
                proxy_next_upstream_tries {tries};
                proxy_read_timeout 5s;
            }}
""")
        check = (f"auth_request /v2/@ready/{model}; error_page 401 403 500 502 503 504 = @not_ready_{k}; "
                 f"try_files /.never @ready_{k + 1};")
        if k == 0:
            inner.append(f"            location = /v2/health/ready {{ {check} }}\n")
        else:
            chain.append(f"        location @ready_{k} {{ {check} }}\n")
        body = quoted(error_body("v2", 503, f"model '{model}' has no ready replica"))
        chain.append(f"        location @not_ready_{k} {{ return 503 {body}; }}\n")
    chain.append(f"        location @ready_{len(names)} {{ return 200 '{{\"ready\":true}}'; }}\n")
    return "".join(inner), "".join(chain)


def _grpc_server(models: Mapping[str, Upstreams], listen: str, down: set[str], body_limit: int,
                 read_timeout_s: int) -> str:
    """The HTTP/2 listener in front of the replicas' gRPC servers, routed by the `model` request metadata."""
    routed = [m for m, u in models.items() if u.grpc]
    out = [f"    upstream grpc_{m} {{\n{_servers(models[m].grpc, down)}        keepalive 16;\n    }}\n"
           for m in routed]
    out.append(f"    upstream grpc_any {{\n{_servers([a for m in routed for a in models[m].grpc], down)}"
               "        keepalive 16;\n    }\n")
    default = f"grpc_{routed[0]}" if len(routed) == 1 else "grpc_any"
    entries = "".join(f"        {m} grpc_{m};\n" for m in routed)
    out.append(f"    map $http_model $grpc_upstream {{\n        \"\" {default};\n{entries}        default \"\";\n"
               "    }\n")
    messages = _gateway_messages(body_limit, read_timeout_s)
    messages[404] = (f"name the model in the request metadata 'model' (one of: {', '.join(routed) or 'none'}); "
                     "e.g. tritonclient.grpc headers={'model': name}")
    pages = "".join(f"        location @grpc_{s} {{ default_type application/grpc; "
                    f"add_header grpc-status {_GRPC_CODES[s]} always; add_header grpc-message "
                    f"{quoted(messages[s].replace('%', ' percent'))} always; return 204; }}\n"
                    for s in (404, *GATEWAY_STATUSES))
    retry = "grpc_next_upstream error timeout non_idempotent; grpc_next_upstream_tries 3;"
    out.append(f"""    server {{
        listen {listen} http2;
        client_max_body_size {body_limit};
        grpc_connect_timeout 2s;
        grpc_read_timeout {read_timeout_s}s;
        grpc_send_timeout 10s;
        grpc_set_header X-Request-ID $rid;
        error_page 404 = @grpc_404; {_error_pages('grpc')}
{pages}        # Model RPCs (ModelInfer, ModelMetadata, ModelReady, ...) need the model named; server RPCs do not.
        location ~ ^/inference\\.GRPCInferenceService/Model {{
            if ($grpc_upstream = "") {{ return 404; }}
            if ($grpc_upstream = grpc_any) {{ return 404; }}
            {retry}
            grpc_pass grpc://$grpc_upstream;
        }}
        location / {{
            if ($grpc_upstream = "") {{ return 404; }}
            {retry}
            grpc_pass grpc://$grpc_upstream;
        }}
    }}
""")
    return "".join(out)


def _http_preamble(workdir: Path, access_log: str, body_limit: int, read_timeout_s: int, daemon: bool) -> str:
    tmp = workdir / "tmp"
    return f"""# Generated by stack/gateway.py from models.yaml: do not edit (make up rewrites it).
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
"""


def render(upstreams: Mapping[str, Upstreams | list[str]], listen: str, workdir: Path, access_log: str, *,
           down: Iterable[str] = (), status_allow: Iterable[str] = ("127.0.0.1", "::1"),
           status_listen: str | None = None, passthrough: dict[str, str] | None = None,
           grpc_listen: str | None = None, body_limit: int = 1_048_576, read_timeout_s: int = 60,
           server: tuple[str, str] = ("model-serving-platform", "0.1.0"), daemon: bool = False,
           splits: Mapping[str, Split] | None = None) -> str:
    """The nginx config: `upstreams` maps model -> its replicas (Upstreams, or a list of addresses for HTTP only);
    `down` names addresses to take out of rotation (a rolling restart drains them first). `status_listen`:
    stub_status on a listener of its own (containers: a port that is not published) instead of a loopback-only
    location. `passthrough`: listen -> host:port proxied as is (the container deployment's Airflow UI, which has
    its own login). `grpc_listen`: the HTTP/2 gRPC listener (models with gRPC replicas only). `server`: the
    (name, version) answered at /v2. `splits`: model -> its canary share (Split; models with canary replicas)."""
    models = {m: u if isinstance(u, Upstreams) else Upstreams(list(u)) for m, u in upstreams.items()}
    for model in models:
        if not _SAFE_NAME.match(model):
            raise GatewayError(f"model name {model!r} cannot be routed (letters, digits, _ . - only)")
    names = list(models)
    down = set(down)
    messages = _gateway_messages(body_limit, read_timeout_s)
    out = [_http_preamble(workdir, access_log, body_limit, read_timeout_s, daemon)]
    for model, up in models.items():
        out.append(_upstream(f"serving_{model}", up.http, down))
        out.append(_upstream(f"jobs_{model}", up.job_replicas, down, up.job_backups))
    split_of = {m: _split(m, up, (splits or {}).get(m), down) for m, up in models.items()}
    if any(split_of.values()):
        out.append(_SPLIT_MAPS + "".join(split_of.values()))
    # Where a model's sync routes go: its replicas, or the split's choice. A proxy_pass naming a variable passes
    # the request URI as is, so the prefix-stripping routes rewrite it first.
    sync = {m: f"$pool_{m}" if split_of[m] else f"serving_{m}" for m in models}
    out.append(_upstream("jobs_any", list(dict.fromkeys(a for u in models.values() for a in u.job_replicas)), down,
                         list(dict.fromkeys(a for u in models.values() for a in u.job_backups))))

    status_location = "" if status_listen else (
        "        location = /gateway/status {\n            stub_status;\n            default_type text/plain;\n"
        + "".join(f"            allow {a};\n" for a in status_allow) + "            deny all;\n        }\n")
    tries = (f"proxy_next_upstream_tries {RETRY_TRIES}; proxy_next_upstream_timeout {RETRY_BUDGET_S}s; "
             f"proxy_read_timeout {_retry_read_timeout(read_timeout_s)}s;")
    retry = f"proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent; {tries}"
    retry_get = f"proxy_next_upstream error timeout http_502 http_503 http_504; {tries}"
    pages = "".join(f"        location @{p}_{s} {{ return {s} {quoted(error_body(p, s, messages[s]))}; }}\n"
                    for p in ("v1", "v2", "mlflow") for s in GATEWAY_STATUSES)
    ready_inner, ready_chain = _readiness(models)
    metadata = {"name": server[0], "version": server[1], "extensions": list(SERVER_EXTENSIONS)}
    every = ("/v1/models/<model>/..., /v2/models/<model>/..., /v2/health/live|ready, /v2, "
             "/models/<model>/invocations or /v1/jobs/<id>")
    out.append(f"""
    server {{
        listen {listen} reuseport backlog=4096;
{pages}{ready_chain}        # nginx's own liveness (each model's: /models/<m>/healthz and /models/<m>/readyz)
        location = /gateway/health {{ return 200 '{{"status":"ok"}}'; }}
        location = /healthz {{ return 200 '{{"status":"ok"}}'; }}
{status_location}
        location / {{ {_error_pages('v1')} {_no_route('v1', every)} }}

        # --- the platform's own API (/v1) ---
        location ^~ /v1/ {{
            {_error_pages('v1')}
            # Job reads: any job replica of any model answers (ids are global, the queue is shared); GET
            # retries, DELETE (cancel) does not.
            location ^~ /v1/jobs/ {{ {retry_get} proxy_pass http://jobs_any; }}
""")
    for model in names:
        out.append(f"""            # {model}
            location = /v1/models/{model} {{ {retry} proxy_pass http://{sync[model]}; }}
            location ^~ /v1/models/{model}/ {{ {retry} proxy_pass http://{sync[model]}; }}
            # A submit queues a job: retried on another replica only with an Idempotency-Key (then the queue
            # answers the same job). The key's presence picks the location (nginx cannot vary retries by header).
            location = /v1/models/{model}/jobs {{
                if ($http_idempotency_key) {{ rewrite ^ /v1/@idempotent/models/{model}/jobs last; }}
                proxy_pass http://jobs_{model};
            }}
            location ^~ /v1/models/{model}/jobs/ {{ proxy_pass http://jobs_{model}; }}
            location = /v1/@idempotent/models/{model}/jobs {{
                internal;
                rewrite ^ /v1/models/{model}/jobs break;
                {retry}
                proxy_pass http://jobs_{model};
            }}
""")
    out.append(_unknown_model("v1", "/v1/models/", names))
    out.append(f"""            {_no_route('v1', every)}
        }}

        # --- the Open Inference Protocol (/v2) ---
        location = /v2 {{ {_error_pages('v2')} return 200 {quoted(metadata)}; }}
        location ^~ /v2/ {{
            {_error_pages('v2')}
            location = /v2/health/live {{ return 200 '{{"live":true}}'; }}
{ready_inner}""")
    for model in names:
        out.append(f"            location = /v2/models/{model} {{ {retry} proxy_pass http://{sync[model]}; }}\n"
                   f"            location ^~ /v2/models/{model}/ {{ {retry} proxy_pass http://{sync[model]}; }}\n")
    out.append(_unknown_model("v2", "/v2/models/", names))
    out.append(f"""            {_no_route('v2', '/v2, /v2/health/live, /v2/health/ready, /v2/models/<model>/...')}
        }}

        # --- MLflow's scoring protocol, one prefix per model (/models/<m>/invocations) ---
        location ^~ /models/ {{
            {_error_pages('mlflow')}
""")
    for model in names:
        target = (f"rewrite ^/models/{model}(/.*)$ $1 break; proxy_pass http://{sync[model]};" if split_of[model]
                  else f"proxy_pass http://serving_{model}/;")
        out.append(f"            location ^~ /models/{model}/ {{ {retry} {target} }}\n")
    out.append(_unknown_model("mlflow", "/models/", names))
    out.append(f"            {_no_route('mlflow', '/models/<model>/invocations')}\n        }}\n")
    # the path MLflow's deployments client posts to (get_deploy_client(gateway).predict(endpoint=<m>, ...))
    out.append(f"        location ^~ /endpoints/ {{\n            {_error_pages('mlflow')}\n")
    for model in names:
        target = (f"rewrite ^ /invocations break; proxy_pass http://{sync[model]};" if split_of[model]
                  else f"proxy_pass http://serving_{model}/invocations;")
        out.append(f"            location = /endpoints/{model}/invocations {{ {retry} {target} }}\n"
                   f"            location ^~ /endpoints/{model}/ {{ "
                   f"{_no_route('mlflow', f'/endpoints/{model}/invocations')} }}\n")
    out.append(_unknown_model("mlflow", "/endpoints/", names))
    out.append(f"            {_no_route('mlflow', '/endpoints/<model>/invocations')}\n        }}\n    }}\n")
    if status_listen:
        out.append(f"    server {{\n        listen {status_listen};\n"
                   "        location = /gateway/status { stub_status; default_type text/plain; }\n"
                   "        location / { return 404; }\n    }\n")
    for i, (where, target) in enumerate((passthrough or {}).items()):
        out.append(f"    upstream passthrough_{i} {{ server {target}; keepalive 8; }}\n"
                   f"    server {{\n        listen {where};\n        client_max_body_size 10m;\n"
                   f"        location / {{ proxy_pass http://passthrough_{i}; }}\n    }}\n")
    if grpc_listen and any(u.grpc for u in models.values()):
        out.append(_grpc_server(models, grpc_listen, down, body_limit, read_timeout_s))
    out.append("}\n")
    return "".join(out)
