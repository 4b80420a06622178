"""Running one server process until it is told to stop: SIGTERM and SIGINT drain it (see
`StnServer.drain`); SIGHUP runs the server's rescan where it was given one, and is otherwise
logged and ignored."""

from __future__ import annotations

import logging
import os
import signal

from stn_serve.server.app import create_server
from stn_serve.server.signals import log_shutdown, queued_signals

log = logging.getLogger(__name__)


def grpc_address(host: str, port: int) -> str:
    """`host:port` as gRPC takes it (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(
    repository,
    host: str,
    port: int,
    options,
    runtime_options,
    *,
    reuse_port: bool = False,
    on_serving=None,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain; returns the exit code (0). `on_serving()` is
    called once the server answers."""
    # Signals that come while the models load wait in the queue: SIGHUP must not kill the server.
    with queued_signals() as signals:
        server = None
        try:
            server, bound = create_server(
                repository,
                grpc_address(host, port),
                options,
                runtime_options,
                reuse_port=reuse_port,
            )
            server.start()
            log.info(
                "serving",
                extra={"port": bound, "metrics_port": server.metrics_port, "pid": os.getpid()},
            )
            if on_serving is not None:
                on_serving()
            while (signum := signals.get()) == signal.SIGHUP:
                rescan(server)
            log_shutdown(log, signum, options)
            server.drain()
        finally:
            if server is not None:
                server.stop(grace=None)  # a no-op after the drain; stops one that failed meanwhile
    log.info("stopped")
    return 0


def rescan(server) -> None:
    """SIGHUP: the server's rescan, where it has one; never stop serving over it."""
    try:
        rescanned = server.rescan()
    except Exception:
        log.exception("SIGHUP: rescanning the repository failed; serving the models as they were")
        return
    if rescanned:
        log.info("SIGHUP: repository rescanned", extra={"models": server.repository.names()})
    else:
        log.info("SIGHUP ignored: the models were loaded at start and nothing rescans them")
