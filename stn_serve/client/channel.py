"""Channel settings: message size limits, client-side load balancing and retries, and several
channels with a connection each."""

from __future__ import annotations

import json

import grpc

from stn_serve.client.defaults import DEFAULT_MAX_MESSAGE_MB

# round_robin keeps a sub-channel to every address the resolver returns, so a `dns:///` target
# naming a headless Service spreads requests over all pods instead of pinning one HTTP/2
# connection to one pod. Predictions are idempotent, so UNAVAILABLE (a pod going away during a
# rollout) is retried on another address.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": "stn.v1.StnService"}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def channel_options(max_message_mb: float = DEFAULT_MAX_MESSAGE_MB) -> list[tuple[str, object]]:
    """gRPC channel arguments for a client of the stn-serve server."""
    limit = int(max_message_mb * 1024 * 1024)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
    ]


def open_channels(
    target: str, count: int, max_message_mb: float = DEFAULT_MAX_MESSAGE_MB
) -> list[grpc.Channel]:
    """`count` channels to `target`, each with connections of its own (a local subchannel
    pool; channels with the same settings would otherwise share one). A server of several
    processes on one port (`serve --processes`) is balanced by the kernel per connection, so
    requests spread over its processes only when they come over several connections."""
    options = [*channel_options(max_message_mb), ("grpc.use_local_subchannel_pool", 1)]
    return [grpc.insecure_channel(target, options=options) for _ in range(count)]
