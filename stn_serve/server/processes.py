"""`serve --processes N`: N server processes on one port, for request handling on several cores.

The pattern of the grpc repository's `examples/python/multiprocessing`: this process reserves the
port (and the plaintext health port, if any) with SO_REUSEPORT and starts N workers (spawned:
fresh interpreters, so none inherits a gRPC object, a thread or a lock), each binding the same
ports with SO_REUSEPORT and running a whole server of its own (its ONNX Runtime sessions,
batcher, limits, TLS, token check and model control: in poll mode each follows the folder on its
own). The kernel spreads incoming connections, not requests, over the workers; clients that open
several connections (`Client(..., channels=N)`) spread their requests too.

This process stays light: it serves one Prometheus endpoint summing every worker's metrics
(prometheus_client's multiprocess mode, through files in PROMETHEUS_MULTIPROC_DIR), forwards
SIGTERM, SIGINT and SIGHUP (a rescan in each, in poll mode) to the workers, restarts a worker
that dies (logged), and exits once every worker has drained. A worker that fails before it
serves (a model that does not load, a port that is taken) stops them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait

from stn_serve.errors import InvalidInputError, StnServeError
from stn_serve.server.signals import log_shutdown, queued_signals

log = logging.getLogger(__name__)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# A worker that died this soon after the last start of its slot waits before the next one, so a
# worker that keeps dying does not spin.
RESTART_BACKOFF_S = 1.0
# How long after the drain (drain delay + grace) a worker may take to exit before it is killed.
EXIT_MARGIN_S = 30.0
# How often the supervisor looks at its signals while it waits for workers.
POLL_S = 0.2


@contextlib.contextmanager
def reserved_port(host: str, port: int):
    """Bind `host:port` with SO_REUSEPORT (port 0 picks one) and yield the port; the workers bind
    it too. The socket never listens, so no connection lands on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise InvalidInputError(f"cannot bind {host}:{port}: {error}") from error
        yield sock.getsockname()[1]


def _die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux), so that workers
    never outlive a supervisor that was killed."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(repository, host, port, options, runtime_options, log_level, parent, ready) -> None:
    """One server process (run in a spawned interpreter)."""
    from stn_serve.logs import configure_logging
    from stn_serve.server.running import serve

    configure_logging(log_level)
    _die_with_parent(parent)
    try:
        code = serve(
            repository, host, port, options, runtime_options, reuse_port=True, on_serving=ready.set
        )
    except StnServeError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)


@dataclasses.dataclass
class _Slot:
    process: multiprocessing.Process
    ready: object  # multiprocessing.Event, set once the worker serves
    started: float


def serve_processes(count: int, repository, host: str, port: int, options, runtime_options) -> int:
    """Serve with `count` worker processes until SIGTERM or SIGINT; returns the exit code."""
    from stn_serve.server.metrics import serve_multiprocess

    context = multiprocessing.get_context("spawn")
    log_level = logging.getLevelName(logging.getLogger().level)
    health = (
        contextlib.nullcontext()
        if options.health_port is None
        else reserved_port(options.health_host, options.health_port)
    )
    with (
        queued_signals() as signals,
        tempfile.TemporaryDirectory(prefix="stn-serve-metrics-") as metrics_dir,
        reserved_port(host, port) as bound,
        health as health_port,
    ):
        os.environ[MULTIPROCESS_DIR] = metrics_dir  # the workers inherit it
        worker_options = dataclasses.replace(options, metrics_port=None, health_port=health_port)

        def start() -> _Slot:
            ready = context.Event()
            process = context.Process(
                target=_worker,
                args=(
                    repository,
                    host,
                    bound,
                    worker_options,
                    runtime_options,
                    log_level,
                    os.getpid(),
                    ready,
                ),
                name="stn-serve-worker",
            )
            process.start()
            return _Slot(process, ready, time.monotonic())

        slots = [start() for _ in range(count)]
        http = None
        try:
            code = _wait_until_ready(slots, signals)
            if code is not None:
                return code
            if options.metrics_port is not None:
                http = serve_multiprocess(options.metrics_port, options.metrics_host)
            log.info(
                "serving",
                extra={
                    "host": host,
                    "port": bound,
                    "metrics_port": http.server_port if http else None,
                    "health_port": health_port,
                    "processes": count,
                    "pids": [slot.process.pid for slot in slots],
                },
            )
            signum = _supervise(slots, signals, start, metrics_dir)
            log_shutdown(log, signum, options)
            return _stop(slots, signal.SIGTERM, options.drain_delay_s + options.grace_s)
        finally:
            for slot in slots:  # none is left after a drain; any left now is past saving
                _send(slot, signal.SIGKILL)
                slot.process.join()
            if http is not None:
                http.shutdown()
                http.server_close()
            log.info("stopped")


def _wait_until_ready(slots: list[_Slot], signals: queue.SimpleQueue) -> int | None:
    """Wait for every worker to serve; the exit code to stop with when one fails or a stop
    signal comes first, else None."""
    while not all(slot.ready.is_set() for slot in slots):
        with contextlib.suppress(queue.Empty):
            signum = signals.get_nowait()
            if signum != signal.SIGHUP:
                return _stop(slots, signal.SIGTERM, EXIT_MARGIN_S)
        for slot in slots:
            if slot.process.exitcode is not None:
                log.error(
                    "a server process failed to start; stopping the others",
                    extra={"pid": slot.process.pid, "exit_code": slot.process.exitcode},
                )
                _stop(slots, signal.SIGTERM, EXIT_MARGIN_S)
                return slot.process.exitcode or 1
        wait([slot.process.sentinel for slot in slots], POLL_S)
    return None


def _supervise(slots: list[_Slot], signals: queue.SimpleQueue, start, metrics_dir: str) -> int:
    """Forward SIGHUP, restart workers that die; returns the stop signal once one comes."""
    from prometheus_client import multiprocess

    while True:
        with contextlib.suppress(queue.Empty):
            signum = signals.get_nowait()
            if signum != signal.SIGHUP:
                return signum
            log.info("SIGHUP: passed on to every server process")
            for slot in slots:
                _send(slot, signal.SIGHUP)
        for index, slot in enumerate(slots):
            if slot.process.exitcode is None:
                continue
            log.error(
                "a server process died; starting another",
                extra={"pid": slot.process.pid, "exit_code": slot.process.exitcode},
            )
            multiprocess.mark_process_dead(slot.process.pid, metrics_dir)
            if time.monotonic() - slot.started < RESTART_BACKOFF_S:
                time.sleep(RESTART_BACKOFF_S)
            slots[index] = start()
        wait([slot.process.sentinel for slot in slots], POLL_S)


def _send(slot: _Slot, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if slot.process.exitcode is None:
            os.kill(slot.process.pid, signum)


def _stop(slots: list[_Slot], signum: int, within_s: float) -> int:
    """Send `signum` to every live worker and wait for them (killing any still alive after
    `within_s` + EXIT_MARGIN_S); 0 when every one exited with 0."""
    for slot in slots:
        _send(slot, signum)
    deadline = time.monotonic() + within_s + EXIT_MARGIN_S
    for slot in slots:
        slot.process.join(max(0.0, deadline - time.monotonic()))
        if slot.process.exitcode is None:
            log.error(
                "a server process did not exit in time; killed", extra={"pid": slot.process.pid}
            )
            _send(slot, signal.SIGKILL)
            slot.process.join()
    return 0 if all(slot.process.exitcode == 0 for slot in slots) else 1
