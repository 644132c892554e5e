"""Open Inference over gRPC beside REST `/v2` infer, measured the same way (a scenario of `make bench-online`).

wrk speaks no HTTP/2 and ghz is not packaged for Debian, so both protocols are driven by the same Python
load generator: PROCESSES client processes, each one request in flight at a time, for `duration` seconds, every
body built once before the run (REST: a JSON 2-D FP32 tensor; gRPC: the serialized ModelInferRequest with the
same tensor as raw_input_contents), responses read but not parsed. REST keeps one keep-alive connection per
client process (nginx keeps it; the replica's sync workers close theirs, so direct REST pays a loopback connect
a request, as a wrk run does); gRPC keeps one HTTP/2 channel per client process. One replica (the bench's
SERVING_WORKERS) serves both, with its gRPC server in every worker (serving/grpc/server.py). Client and server
share the 2 cores: both figures are lower than a C load generator would measure, by the same client's cost.

Rows, each directly at the replica and through the gateway (`gw-`: a real nginx as `make up` renders it, REST
to the replica's Unix socket, gRPC by grpc_pass over HTTP/2, the model named in the `model` metadata): `rest-1`,
`grpc-1` (one row a request) and `grpc-100` (100 rows a request; rows/s = req/s x 100).
Targets (issue 20), through the gateway: gw-grpc-1 >= 1.0x gw-rest-1; gw-grpc-100 rows/s >= 10x gw-grpc-1's.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

PROCESSES = 8
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


def _rest_client(target: tuple[str, int, str], body: bytes, until: float, out: Any) -> None:
    host, port, path = target
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Content-Type": "application/json"}
    lat, errors = [], 0
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            ok = False
        lat.append(time.perf_counter() - t0)
        errors += not ok
    out.put((lat, errors))


def _grpc_client(target: tuple[str, str], body: bytes, until: float, out: Any) -> None:
    import grpc

    address, model = target
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(_METHOD, request_serializer=None, response_deserializer=None)
        metadata = (("model", model),)  # the gateway routes by it; a replica ignores it
        lat, errors = [], 0
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            try:
                call(body, timeout=10, metadata=metadata)
                ok = True
            except grpc.RpcError:
                ok = False
            lat.append(time.perf_counter() - t0)
            errors += not ok
    out.put((lat, errors))


def drive(name: str, kind: str, target: Any, body: bytes, rows: int, duration: float,
          processes: int = PROCESSES) -> Run:
    """`processes` clients for `duration` seconds, started together once every one has warmed up (connected and
    made calls for 1 s, not counted)."""
    ctx = multiprocessing.get_context("spawn")  # no inherited gRPC state in the children
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    fn = _rest_client if kind == "rest" else _grpc_client
    procs = [ctx.Process(target=_warm_then_run, args=(fn, target, body, duration, ready, go, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    lat: list[float] = []
    errors = 0
    for _ in procs:
        got, bad = out.get(timeout=duration + 60)
        lat += got
        errors += bad
    for p in procs:
        p.join(10)
    arr = np.array(lat) * 1000 if lat else np.array([0.0])
    return Run(name, rows, len(lat) / duration, float(np.percentile(arr, 50)), float(np.percentile(arr, 99)),
               errors, len(lat))


def _warm_then_run(fn: Any, target: Any, body: bytes, duration: float, ready: Any, go: Any, out: Any) -> None:
    import queue

    fn(target, body, time.perf_counter() + 1.0, queue.SimpleQueue())  # connect, first calls: not counted
    ready.put(True)
    go.wait()
    fn(target, body, time.perf_counter() + duration, out)


@dataclass(frozen=True)
class Door:
    """Where the scenario's clients go: a REST (host:port) and a gRPC address; `prefix` names its rows."""

    prefix: str
    http: tuple[str, int]
    grpc: str


def scenario(model: str, doors: list[Door], one: np.ndarray, hundred: np.ndarray, duration: float,
             rounds: int = 1) -> list[Run]:
    """rest-1, grpc-1 and grpc-100 at each door, round-robin for `rounds`, the best run of each kept."""
    runs = []
    for door in doors:
        runs += [(f"{door.prefix}rest-1", "rest", (*door.http, f"/v2/models/{model}/infer"), rest_body(one), 1),
                 (f"{door.prefix}grpc-1", "grpc", (door.grpc, model), grpc_body(model, one), 1),
                 (f"{door.prefix}grpc-100", "grpc", (door.grpc, model), grpc_body(model, hundred), len(hundred))]
    tries: dict[str, list[Run]] = {}
    for rnd in range(1, rounds + 1):
        for name, kind, target, body, rows in runs:
            r = drive(name, kind, target, body, rows, duration)
            print(f"  round {rnd} {name:<12} {r.rps:>8.0f} req/s {r.rows_per_s:>9.0f} rows/s  p50 {r.p50_ms:6.2f} ms"
                  f"  p99 {r.p99_ms:7.2f} ms  errors {r.errors}", flush=True)
            tries.setdefault(name, []).append(r)
    kept = [max(runs_of, key=lambda r: r.rps) for runs_of in tries.values()]
    for best, runs_of in zip(kept, tries.values(), strict=True):
        best.errors = sum(r.errors for r in runs_of)  # counted over every run, not only the best
    return kept


def report(runs: list[Run]) -> str:
    """The scenario's table and its target line; returns the figures for the bench's last line."""
    by = {r.name: r for r in runs}
    door = "gw-" if "gw-grpc-1" in by else ""  # the targets are judged through the gateway when it ran
    print(f"\ngRPC vs REST /v2 infer, one replica, direct and through the gateway (gw-), {PROCESSES} Python client "
          f"processes (the same client for both)")
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
        print(f"  the gateway's tax: rest-1 {by['gw-rest-1'].rps / by['rest-1'].rps:.2f}x direct, grpc-1 "
              f"{by['gw-grpc-1'].rps / by['grpc-1'].rps:.2f}x direct")
    return f"grpc_1row_vs_rest={one:.2f} grpc_100row_rows_vs_1row={hundred:.1f}"
