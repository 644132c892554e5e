"""The gRPC server of one gunicorn worker, started by serving/gunicorn.conf.py's `post_worker_init` when
SERVING_GRPC_PORT is set.

Why inside the gunicorn workers, not a process of its own: a sync worker cannot speak HTTP/2, but it can run a
grpc.server (its own small thread pool) beside its HTTP loop. Every worker of the replica binds the same port
(SO_REUSEPORT: the kernel spreads connections over the workers), so gRPC gets all of the replica's worker
processes, and it serves with the worker's own app objects: the same ModelHolder (a new champion is seen by
HTTP and gRPC at the same swap, with no second model copy or registry poller), the same prediction function,
payload log, limits and token list. A separate gRPC process per replica would be one more process to supervise
with its own copy of the model, and one GIL for all of its gRPC traffic.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from flask import Flask
from tritonclient.grpc import service_pb2_grpc

from serving.auth import EXTENSION_KEY as AUTH_KEY
from serving.auth import Authorizer
from serving.dataplane import EXTENSION_KEY, DataPlane
from serving.grpc.service import InferenceService
from serving.predict import Predictor

log = logging.getLogger(__name__)


def start(predictor: Predictor, authorizer: Authorizer, address: str, *, threads: int,
          max_message_bytes: int) -> grpc.Server:
    """A started server for `predictor` on `address` ("host:port"); raises RuntimeError when it cannot bind."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        options=[("grpc.so_reuseport", 1),  # every worker of the replica on the one port
                 ("grpc.max_receive_message_length", max_message_bytes),  # SERVING_MAX_BODY_BYTES, as HTTP
                 ("grpc.max_send_message_length", -1)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(predictor, authorizer), server)
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"gRPC: cannot bind {address} (SERVING_GRPC_PORT)")
    server.start()
    return server


def start_for_app(app: Flask, address: str, threads: int) -> grpc.Server:
    """The server of a gunicorn worker, on the objects of the worker's app."""
    plane: DataPlane = app.extensions[EXTENSION_KEY]
    server = start(plane.predictor, app.extensions[AUTH_KEY], address, threads=threads,
                   max_message_bytes=plane.settings.max_body_bytes)
    log.info("gRPC (Open Inference) for model %s on %s, %d threads", plane.spec.name, address, threads)
    return server


def grpc_address(bind: str, port: int) -> str:
    """Where a replica's gRPC listens: the host of its HTTP bind (SERVING_BIND), loopback for a unix socket."""
    host = "127.0.0.1" if bind.startswith("unix:") else bind.rsplit(":", 1)[0] or "127.0.0.1"
    return f"{host}:{port}"
