"""Running one server process until it is told to stop: SIGTERM and SIGINT drain it (see
`StnServer.drain`); SIGHUP rescans the model repository in poll mode, and is otherwise logged and
ignored."""

from __future__ import annotations

import logging
import os
import signal

from stn_serve.server.app import create_server
from stn_serve.server.options import grpc_address
from stn_serve.server.signals import log_shutdown, queued_signals

log = logging.getLogger(__name__)


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
                extra={
                    "host": host,
                    "port": bound,
                    "metrics_port": server.metrics_port,
                    "health_port": server.health_port,
                    "pid": os.getpid(),
                },
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
    """SIGHUP: a rescan of the repository in poll mode (the poll thread runs it at once)."""
    mode = server.control.mode
    if server.rescan():
        log.info("SIGHUP: rescanning the repository", extra={"model_control": mode})
    else:
        log.info(
            "SIGHUP ignored: only model control mode 'poll' rescans the repository",
            extra={"model_control": mode},
        )
