"""A plaintext port that answers health checks only, for probes that cannot speak TLS.

Kubernetes' native gRPC probes have no TLS. A server that serves TLS on its main port can answer
them here instead: `grpc.health.v1.Health/Check` from the main server's own health servicer (so
both ports always report the same), nothing else. Watch is refused, so that no stream stays open
on it, and a flood beyond `MAX_CONCURRENT_CHECKS` is answered RESOURCE_EXHAUSTED at once. No
bearer token is asked for, as on the main port's health checks. Bind it to the pod's own address
(not 0.0.0.0) so that it does not widen what the main port exposes.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc

from stn_serve.errors import InvalidInputError

MAX_CONCURRENT_CHECKS = 16


class _CheckOnly(health_pb2_grpc.HealthServicer):
    """Answers Check from `health` (the main server's asyncio health servicer)."""

    def __init__(self, health: health_pb2_grpc.HealthServicer):
        self._health = health

    async def Check(self, request, context):
        return await self._health.Check(request, context)

    async def Watch(self, request, context):
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "the health port answers Check only; Watch the main port"
        )


def create_health_server(
    health: health_pb2_grpc.HealthServicer, address: str, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int]:
    """A plaintext asyncio server on `address` answering Check from `health`; returns it, not
    yet started, and the port it bound. Call it on the event loop the main server runs on.
    `reuse_port`: several processes bind the same port (`serve --processes`)."""
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", int(reuse_port))],
        maximum_concurrent_rpcs=MAX_CONCURRENT_CHECKS,
    )
    health_pb2_grpc.add_HealthServicer_to_server(_CheckOnly(health), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise InvalidInputError(f"cannot bind the health port {address}: {error}") from error
    return server, port
