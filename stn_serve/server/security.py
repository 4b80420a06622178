"""Transport security for the gRPC server: TLS and mutual TLS from PEM files, and bearer tokens.

- `server_credentials(cert, key, client_ca=None)`: credentials for `add_secure_port`. The files
  are checked first (`stn_serve.server.tls_files`), so a bad one is named with what is wrong
  (gRPC itself only fails handshakes later). With `client_ca`, clients must present a
  certificate that this CA signed (mutual TLS). The files are watched: when they change (a
  Kubernetes Secret or cert-manager renewing them), new connections get the new certificate,
  once it checks out.
- `TokenAuthInterceptor` (for `grpc.aio.server`), with the token from
  `stn_serve.contract.auth.read_token(path)`: every call must carry
  `authorization: Bearer <token>`, compared in constant time, or is answered UNAUTHENTICATED
  before any handler runs; health checks stay open so that probes work without the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path

import grpc

from stn_serve.contract.auth import AUTHORIZATION, BEARER, authorization_value
from stn_serve.server.tls_files import check_certificate_files

log = logging.getLogger(__name__)

#: Methods answered without a token: Kubernetes' probes and load balancers cannot send one.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
UNAUTHENTICATED_MESSAGE = (
    f"missing or wrong bearer token: send '{AUTHORIZATION}: {authorization_value('<token>')}'"
)


def _configuration(cert: Path, key: Path, client_ca: Path | None):
    check_certificate_files(cert, key, client_ca)
    return grpc.ssl_server_certificate_configuration(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=Path(client_ca).read_bytes() if client_ca else None,
    )


class _CertificateReloader:
    """gRPC asks this before each new connection's handshake: a new configuration when the files
    changed and check out, else None (keep the current one)."""

    def __init__(self, paths: tuple[Path, ...], build):
        self._paths = paths
        self._build = build
        self._lock = threading.Lock()
        self._seen = self._signature()

    def _signature(self) -> tuple:
        found = []
        for path in self._paths:
            try:
                status = os.stat(path)
            except OSError:
                found.append(None)
            else:
                found.append((status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(found)

    def __call__(self):
        with self._lock:
            signature = self._signature()
            if signature == self._seen:
                return None
            self._seen = signature
            try:
                configuration = self._build()
            except Exception as error:  # noqa: BLE001 - a bad renewal must not stop serving
                log.error(
                    "new TLS files refused; serving the certificate loaded before",
                    extra={"paths": [str(p) for p in self._paths], "reason": str(error)},
                )
                return None
        log.info("TLS certificate reloaded", extra={"paths": [str(p) for p in self._paths]})
        return configuration


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with `client_ca`, mutual TLS (clients must present a
    certificate signed by it). Reloaded for new connections when the files change.

    Raises:
        InvalidInputError: a file is missing, unreadable or not what it should be (named).
    """
    files = (Path(cert), Path(key), *([Path(client_ca)] if client_ca else []))
    initial = _configuration(cert, key, client_ca)
    reloader = _CertificateReloader(files, lambda: _configuration(cert, key, client_ca))
    return grpc.dynamic_ssl_server_credentials(
        initial, reloader, require_client_authentication=client_ca is not None
    )


class _TokenCheck:
    """Whether a call's metadata carries the token; the comparison takes the same time for any
    wrong token (it compares SHA-256 digests, so not even the token's length leaks)."""

    def __init__(self, token: str, open_methods: frozenset[str]):
        self._digest = hashlib.sha256(token.encode()).digest()
        self._open = open_methods

    def allows(self, method: str, metadata) -> bool:
        if method in self._open:
            return True
        allowed = False
        for key, value in metadata or ():
            if key != AUTHORIZATION or not isinstance(value, str):
                continue
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == BEARER.lower():
                digest = hashlib.sha256(credential.strip().encode()).digest()
                allowed |= hmac.compare_digest(digest, self._digest)
        return allowed


def _refusal(handler: grpc.RpcMethodHandler | None, deny) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` whose behaviour is `deny` (an unknown method is
    refused like a known one, so that a caller without the token learns nothing)."""
    streaming_in = bool(handler and handler.request_streaming)
    streaming_out = bool(handler and handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(streaming_in, streaming_out)]
    return make(deny)


async def _deny(request, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer-token authentication for `grpc.aio.server(..., interceptors=[...])`."""

    def __init__(self, token: str, open_methods: frozenset[str] = OPEN_METHODS):
        self._check = _TokenCheck(token, open_methods)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if self._check.allows(
            handler_call_details.method, handler_call_details.invocation_metadata
        ):
            return handler
        return _refusal(handler, _deny)
