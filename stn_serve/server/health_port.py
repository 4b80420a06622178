"""A plaintext port that answers health checks only, for probes that cannot speak TLS.

Kubernetes' native gRPC probes have no TLS. A server that serves TLS on its main port can answer
them here instead: `grpc.health.v1.Health/Check` from the main server's own health servicer (so
both ports always report the same), nothing else. Watch is refused, so that open streams cannot
tie up its few threads, and a flood beyond `MAX_CONCURRENT_CHECKS` is answered
RESOURCE_EXHAUSTED at once. Bind it to the pod's own address (not 0.0.0.0) so that it does not
widen what the main port exposes.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2_grpc

from stn_serve.errors import InvalidInputError

THREADS = 2
MAX_CONCURRENT_CHECKS = 16


class _CheckOnly(health_pb2_grpc.HealthServicer):
    """Answers Check from `health`; Watch stays UNIMPLEMENTED (the base class's answer)."""

    def __init__(self, health: health_pb2_grpc.HealthServicer):
        self._health = health

    def Check(self, request, context):
        return self._health.Check(request, context)


def create_health_server(
    health: health_pb2_grpc.HealthServicer, address: str
) -> tuple[grpc.Server, int]:
    """A plaintext server on `address` answering Check from `health`; returns it, not yet
    started, and the port it bound."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="health"),
        options=[("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=MAX_CONCURRENT_CHECKS,
    )
    health_pb2_grpc.add_HealthServicer_to_server(_CheckOnly(health), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise InvalidInputError(f"cannot bind the health port {address}: {error}") from error
    return server, port
