"""Signals as a server process takes them: queued for its main loop, never acted on inside the
handler. Light (standard library only), so the supervisor of `serve --processes` loads no gRPC."""

from __future__ import annotations

import contextlib
import logging
import queue
import signal

#: The signals a server takes: SIGTERM and SIGINT drain it, SIGHUP never stops it.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def queued_signals():
    """While the block runs, each of HANDLED goes into the yielded queue (SimpleQueue.put may be
    called from a signal handler); the previous handlers come back afterwards."""
    signals: queue.SimpleQueue = queue.SimpleQueue()
    previous = {sig: signal.signal(sig, lambda signum, _: signals.put(signum)) for sig in HANDLED}
    try:
        yield signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def log_shutdown(log: logging.Logger, signum: int, options) -> None:
    log.info(
        "shutting down",
        extra={
            "signal": signal.Signals(signum).name,
            "drain_delay_s": options.drain_delay_s,
            "grace_s": options.grace_s,
        },
    )
