"""Open Inference over gRPC beside REST `/v2` infer, measured the same way (a scenario of `make bench-online`).

The load generator is C, as wrk is for the other rows: h2load (Debian's nghttp2-client, installed like wrk when
missing) drives gRPC over HTTP/2 cleartext (the framed ModelInferRequest as the body, `content-type:
application/grpc`) and REST through the gateway (HTTP/1.1, the connection kept by nginx); REST straight at a
replica is driven by wrk, because h2load does not reconnect when a sync worker closes its connection after each
answer (which it does: wrk reconnects, as a client of a sync replica must). CONNECTIONS connections, one request
in flight each, for `duration` seconds after 1 s of warm-up; every body built once before the run (REST: a JSON
2-D FP32 tensor; gRPC: the serialized ModelInferRequest with the same tensor as raw_input_contents). A Python
client would be measured instead of the servers: driven by 8 Python client processes (this bench's first form),
the clients took more of the 2 cores than the replica did, and more through the gateway than direct. h2load
counts HTTP statuses and a gRPC error is an HTTP 200 with `grpc-status` in its trailers, so each gRPC body is
first sent once with a real gRPC client and must be answered OK. One replica (the bench's SERVING_WORKERS) serves
both, with its gRPC server in every worker (serving/grpc/server.py).

Rows, each directly at the replica and through the gateway (`gw-`: a real nginx as `make up` renders it, REST
to the replica's Unix socket, gRPC by grpc_pass over HTTP/2, the model named in the `model` metadata): `rest-1`,
`grpc-1` (one row a request) and `grpc-100` (100 rows a request; rows/s = req/s x 100).
Targets (issue 20), through the gateway, both rows by h2load: gw-grpc-1 >= 1.0x gw-rest-1; gw-grpc-100 rows/s
>= 10x gw-grpc-1's.
"""

from __future__ import annotations

import json
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONNECTIONS = 8
WARM_UP_S = 1
_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Run:
    name: str
    rows_per_request: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows_per_request


def rest_body(matrix: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(matrix.shape),
                                   "data": [None if v != v else float(v) for v in matrix.reshape(-1).tolist()]}]
                      }).encode()


def grpc_body(model: str, matrix: np.ndarray) -> bytes:
    from testing.oip_client import matrix_request

    return matrix_request(model, matrix).SerializeToString()


def check_grpc(address: str, model: str, body: bytes) -> None:
    """One call with a real gRPC client: the body h2load will send is answered OK (h2load cannot tell)."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(_METHOD, request_serializer=None, response_deserializer=None)
        call(body, timeout=10, metadata=(("model", model),))


def _h2load(name: str, url: str, headers: list[str], body: bytes, rows: int, duration: float, workdir: Path,
            h1: bool = False) -> Run:
    from stack.debian import ensure_binary

    h2load = ensure_binary("h2load", "nghttp2-client")
    data, log = workdir / f"{name}.body", workdir / f"{name}.log"
    data.write_bytes(body)
    log.unlink(missing_ok=True)
    cmd = [h2load, "-c", str(CONNECTIONS), "-m", "1", "-t", "1", "-D", str(int(duration)), "--warm-up-time",
           str(WARM_UP_S), "-d", str(data), "--log-file", str(log), *[a for h in headers for a in ("-H", h)],
           *(["--h1"] if h1 else []), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 60)
    summary = next((ln for ln in out.stdout.splitlines() if ln.startswith("requests:")), None)
    codes = next((ln for ln in out.stdout.splitlines() if ln.startswith("status codes:")), None)
    if out.returncode != 0 or summary is None or codes is None:
        raise RuntimeError(f"h2load failed for {name}: {out.stdout[-800:]} {out.stderr[-800:]}")
    fields = dict((v, int(k)) for k, v in (part.strip().split(" ", 1) for part in summary[9:].split(",")))
    status = dict((v, int(k)) for k, v in (part.strip().split(" ", 1) for part in codes[13:].split(",")))
    lat = np.array([float(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line.strip()]
                   or [0.0])
    done = fields["succeeded"]
    # not done, and answered but not 2xx (h2load's status counts include the warm-up's: no subtraction)
    errors = fields["failed"] + fields["errored"] + fields["timeout"] + sum(status.get(k, 0) for k in ("3xx", "4xx",
                                                                                                       "5xx"))
    return Run(name, rows, done / duration, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), errors,
               done)


def _wrk(name: str, host: str, port: int, path: str, body: bytes, duration: float, workdir: Path) -> Run:
    from bench.online import lua_post, run_wrk
    from stack.debian import ensure_wrk

    r = run_wrk(ensure_wrk(), name, f"http://{host}:{port}", lua_post(path, [body.decode()]), int(duration), workdir,
                connections=CONNECTIONS, threads=1)
    return Run(name, 1, r.rps, r.p50_ms, r.p99_ms, r.errors, r.requests)


@dataclass(frozen=True)
class Door:
    """Where the scenario's clients go: a REST (host:port) and a gRPC address; `prefix` names its rows."""

    prefix: str
    http: tuple[str, int]
    grpc: str


def scenario(model: str, doors: list[Door], one: np.ndarray, hundred: np.ndarray, duration: float,
             rounds: int = 1) -> list[Run]:
    """rest-1, grpc-1 and grpc-100 at each door, round-robin for `rounds`, the best run of each kept."""
    grpc_headers = ["content-type: application/grpc", "te: trailers", f"model: {model}"]
    path = f"/v2/models/{model}/infer"
    runs = []
    for door in doors:
        host, port = door.http
        for label, matrix in (("1", one), ("100", hundred)):
            body = grpc_body(model, matrix)
            check_grpc(door.grpc, model, body)
            framed = b"\x00" + struct.pack(">I", len(body)) + body  # gRPC's length-prefixed message
            runs.append((f"{door.prefix}grpc-{label}", "h2load", (f"http://{door.grpc}{_METHOD}", grpc_headers, False),
                         framed, len(matrix)))
        rest = ("h2load", (f"http://{host}:{port}{path}", ["content-type: application/json"], True)) if door.prefix \
            else ("wrk", (host, port, path))  # a replica's sync workers close every connection: wrk reconnects
        runs.insert(len(runs) - 2, (f"{door.prefix}rest-1", *rest, rest_body(one), 1))
    tries: dict[str, list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="grpc-bench-") as tmp:
        for rnd in range(1, rounds + 1):
            for name, tool, target, body, rows in runs:
                r = (_h2load(name, target[0], target[1], body, rows, duration, Path(tmp), h1=target[2])
                     if tool == "h2load" else _wrk(name, *target, body, duration, Path(tmp)))
                print(f"  round {rnd} {name:<12} {r.rps:>8.0f} req/s {r.rows_per_s:>9.0f} rows/s  p50 {r.p50_ms:6.2f} "
                      f"ms  p99 {r.p99_ms:7.2f} ms  errors {r.errors}  ({tool})", flush=True)
                tries.setdefault(name, []).append(r)
    kept = [max(runs_of, key=lambda r: r.rps) for runs_of in tries.values()]
    for best, runs_of in zip(kept, tries.values(), strict=True):
        best.errors = sum(r.errors for r in runs_of)  # counted over every run, not only the best
    return kept


def report(runs: list[Run]) -> str:
    """The scenario's table and its target line; returns the figures for the bench's last line."""
    by = {r.name: r for r in runs}
    door = "gw-" if "gw-grpc-1" in by else ""  # the targets are judged through the gateway when it ran
    print(f"\ngRPC vs REST /v2 infer, one replica, direct and through the gateway (gw-), {CONNECTIONS} connections "
          "(h2load; rest-1 by wrk)")
    print(f"{'run':<12} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'requests':>9}")
    for r in runs:
        print(f"{r.name:<12} {r.rps:>9.0f} {r.rows_per_s:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7} "
              f"{r.requests:>9}")
    one = by[f"{door}grpc-1"].rps / by[f"{door}rest-1"].rps
    hundred = by[f"{door}grpc-100"].rows_per_s / by[f"{door}grpc-1"].rows_per_s
    print(f"grpc targets: {door}grpc-1 {one:.2f}x {door}rest-1 (target >= 1.0: {'met' if one >= 1.0 else 'MISSED'});"
          f" {door}grpc-100 rows/s {hundred:.1f}x {door}grpc-1 (target >= 10: {'met' if hundred >= 10 else 'MISSED'});"
          f" errors {sum(r.errors for r in runs)}")
    if door and "grpc-1" in by:
        print(f"  the gateway's tax: grpc-1 {by['gw-grpc-1'].rps / by['grpc-1'].rps:.2f}x direct (h2load both); "
              f"rest-1 {by['gw-rest-1'].rps / by['rest-1'].rps:.2f}x direct (h2load vs wrk: the live and lookup "
              "rows above measure REST's tax with one generator)")
    return f"grpc_1row_vs_rest={one:.2f} grpc_100row_rows_vs_1row={hundred:.1f}"
