"""Channel settings: message size limits, client-side load balancing, retries, transport
security (TLS, mutual TLS, a bearer token), and channels with connections of their own."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from stn_serve.client.defaults import DEFAULT_MAX_MESSAGE_MB
from stn_serve.contract.auth import AUTHORIZATION, authorization_value
from stn_serve.errors import InvalidInputError

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


def _read(path, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InvalidInputError(f"cannot read the {what} {path}: {error.strerror}") from None


def channel_credentials(tls_ca=None, tls_cert=None, tls_key=None) -> grpc.ChannelCredentials:
    """TLS credentials from PEM files: `tls_ca` the CA that signed the server's certificate
    (None: the system's trusted CAs); `tls_cert` and `tls_key` the client's own certificate,
    for a server that requires mutual TLS."""
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInputError(
            "a client certificate needs its key: give both tls_cert and tls_key, or neither"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca, "CA file"),
        private_key=_read(tls_key, "client key"),
        certificate_chain=_read(tls_cert, "client certificate"),
    )


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str):
        self._header = (AUTHORIZATION, authorization_value(token))

    def _with_token(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def open_channel(
    target: str,
    max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
    *,
    tls: bool = False,
    tls_ca=None,
    tls_cert=None,
    tls_key=None,
    tls_server_name: str | None = None,
    token: str | None = None,
    own_connection: bool = False,
) -> grpc.Channel:
    """A channel to `target` (`host:port` or `dns:///host:port`).

    TLS when `tls` or any of the `tls_*` files is given (see `channel_credentials`);
    `tls_server_name` checks the server's certificate against that name instead of the
    target's host (a probe that connects to localhost). `token` is sent with every call.
    `own_connection`: connections of its own (a local subchannel pool); channels with the same
    settings otherwise share one.
    """
    options = channel_options(max_message_mb)
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if tls or any(path is not None for path in (tls_ca, tls_cert, tls_key)):
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        channel = grpc.secure_channel(
            target, channel_credentials(tls_ca, tls_cert, tls_key), options=options
        )
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel


def open_channels(target: str, count: int, **settings) -> list[grpc.Channel]:
    """`count` channels to `target` (`settings` as for `open_channel`), each with a connection
    of its own. A server of several processes on one port (`serve --processes`) is balanced by
    the kernel per connection, so requests spread over its processes only when they come over
    several connections."""
    return [open_channel(target, own_connection=True, **settings) for _ in range(count)]
