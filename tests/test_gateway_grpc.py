"""The gateway's gRPC listener (a real nginx, HTTP/2, grpc_pass) in front of real gRPC servers: routing by the
`model` request metadata, one port for every model; nginx's own answers as gRPC statuses a client can read.

The servers here are grpcio servers with a generic handler that answers which replica took the call (the KServe
v2 servicer of the replicas is driven through the gateway by the end-to-end tests); one listens on TCP, one on
a Unix socket as the local stack's replicas do.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from stack.gateway import Upstreams, start_standalone
from stack.services import stop_process
from testing.ports import free_run

INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"


class _Echo(grpc.GenericRpcHandler):
    """Answers every method with {"replica", "method", "model" (the metadata it was given)} as JSON bytes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            given = dict(context.invocation_metadata())
            return json.dumps({"replica": self.name, "method": details.method, "model": given.get("model"),
                               "bytes": len(request)}).encode()
        return grpc.unary_unary_rpc_method_handler(answer)


def _server(name: str, bind: str) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_Echo(name),))
    assert server.add_insecure_port(bind)
    server.start()
    return server


@dataclass(frozen=True)
class Gateway:
    target: str  # host:port, as gRPC clients take it
    channel: grpc.Channel

    def call(self, method: str, body: bytes = b"", **metadata: str) -> dict:
        stub = self.channel.unary_unary(method)
        return json.loads(stub(body, metadata=tuple(metadata.items()), timeout=10))


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    root = Path(tempfile.mkdtemp(prefix="gateway-grpc-"))
    root.chmod(0o755)
    base = free_run(4)
    churn = _server("churn-1", f"127.0.0.1:{base + 2}")
    spend_sock = root / "spend-1.grpc.sock"
    spend = _server("spend-1", f"unix:{spend_sock}")
    spend_sock.chmod(0o777)  # nginx's workers run as nobody when the tests run as root
    routes = {"churn": Upstreams([f"127.0.0.1:{base + 3}"], grpc=[f"127.0.0.1:{base + 2}"]),
              "spend": Upstreams([f"127.0.0.1:{base + 3}"], grpc=[f"unix:{spend_sock}"]),
              "gone": Upstreams([f"127.0.0.1:{base + 3}"], grpc=[f"127.0.0.1:{base + 3}"])}  # stopped
    proc = start_standalone(routes, base, root / "gw", root / "gw.log", grpc_port=base + 1)
    channel = grpc.insecure_channel(f"127.0.0.1:{base + 1}")
    try:
        yield Gateway(f"127.0.0.1:{base + 1}", channel)
    finally:
        channel.close()
        stop_process(proc)
        churn.stop(0)
        spend.stop(0)
        shutil.rmtree(root, ignore_errors=True)


def _status(gateway: Gateway, method: str, body: bytes = b"", **metadata: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        gateway.call(method, body, **metadata)
    return caught.value


def test_model_calls_are_routed_by_the_model_metadata(gateway: Gateway) -> None:
    for model in ("churn", "spend"):
        answer = gateway.call(INFER, b"\x0a\x05" + model.encode(), model=model)
        assert answer == {"replica": f"{model}-1", "method": INFER, "model": model, "bytes": 2 + len(model)}


def test_a_model_call_naming_no_served_model_is_not_found(gateway: Gateway) -> None:
    for metadata in ({}, {"model": "nope"}):
        err = _status(gateway, INFER, **metadata)
        assert err.code() == grpc.StatusCode.NOT_FOUND, (metadata, err)
        assert "metadata 'model'" in err.details() and "churn, spend, gone" in err.details()
    # the channel is still good afterwards
    assert gateway.call(INFER, model="churn")["replica"] == "churn-1"


def test_server_calls_need_no_model(gateway: Gateway) -> None:
    answer = gateway.call(LIVE)
    assert answer["method"] == LIVE and answer["replica"] in ("churn-1", "spend-1")
    assert gateway.call("/grpc.health.v1.Health/Check", model="spend")["replica"] == "spend-1"


def test_a_model_without_a_reachable_replica_is_unavailable(gateway: Gateway) -> None:
    err = _status(gateway, INFER, model="gone")
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "no replica answered" in err.details()


def test_a_message_over_the_body_limit_is_resource_exhausted(gateway: Gateway) -> None:
    err = _status(gateway, INFER, b"x" * (1_048_576 + 10), model="churn")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "SERVING_MAX_BODY_BYTES" in err.details()
