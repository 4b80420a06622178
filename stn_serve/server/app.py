"""Assembling the gRPC server: `create_server` (tests bind port 0) and `serve` (signals, shutdown)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from stn_serve._proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.runtime import ModelRepository, RuntimeOptions
from stn_serve.server.batching import Dispatcher
from stn_serve.server.inference_service import InferenceServicer
from stn_serve.server.metrics import Metrics
from stn_serve.server.options import ServerOptions
from stn_serve.server.stn_service import StnServicer

log = logging.getLogger(__name__)

SERVED_FILES = (stn_pb2, grpc_service_pb2, health_pb2, reflection_pb2)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A pool holding every served service's file: the generated code keeps its own pool (see
    stn_serve.codegen) and health/reflection sit in protobuf's default one."""
    pool = descriptor_pool.DescriptorPool()
    for module in SERVED_FILES:
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


class StnServer:
    """A configured server; `start()` serves, `stop(grace)` drains and stops (health goes
    NOT_SERVING first, in-flight requests finish within `grace` seconds)."""

    def __init__(self, grpc_server, repository, dispatcher, metrics, health_servicer, options):
        self.grpc_server = grpc_server
        self.repository = repository
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.health = health_servicer
        self.options = options
        self.serving = False
        self.port: int | None = None  # the bound gRPC port, set by create_server
        self.metrics_port: int | None = None
        self._stopping = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> None:
        if self.options.metrics_port is not None:
            self.metrics_port = self.metrics.serve(
                self.options.metrics_port, self.options.metrics_host
            )
        self.grpc_server.start()
        self.serving = True
        status = health_pb2.HealthCheckResponse.SERVING
        self.health.set("", status)
        for name in self.repository.names():
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight ones finish within `grace` seconds, then release
        everything. Requests are refused before health turns NOT_SERVING, so a client that sees
        NOT_SERVING never gets a request accepted here afterwards."""
        with self._stopping:
            if self._stopped.is_set():
                return
            self.serving = False
            self.dispatcher.drain()
            self.health.enter_graceful_shutdown()
            self.grpc_server.stop(grace).wait()
            self.dispatcher.close(timeout=grace)
            self.metrics.close()
            self.repository.unload()
            self._stopped.set()


def create_server(
    repository,
    address: str = "127.0.0.1:0",
    options: ServerOptions | None = None,
    runtime_options: RuntimeOptions | None = None,
    **overrides,
) -> tuple[StnServer, int]:
    """Build a server for `repository` (a folder, or a loaded `ModelRepository`) bound to `address`.

    `overrides` are `ServerOptions` fields (e.g. `max_batch_size=8`). Loads and warms up every
    model before returning; returns the server, not yet started, and the port it bound.
    """
    options = dataclasses.replace(options or ServerOptions(), **overrides)
    if not isinstance(repository, ModelRepository):
        runtime_options = runtime_options or RuntimeOptions()
        warmup = tuple(sorted({1, options.max_batch_size}))
        runtime_options = dataclasses.replace(runtime_options, warmup_batch_sizes=warmup)
        repository = ModelRepository(Path(repository), runtime_options).load()
    if not repository.models():
        failures = {str(path): reason for path, reason in repository.failures.items()}
        raise NotFoundError(
            f"no model in {repository.root} could be loaded: {failures or 'it is empty'}"
        )

    metrics = Metrics()
    dispatcher = Dispatcher(
        metrics,
        options.max_batch_size,
        options.max_queue_delay_us,
        options.max_queue_size,
        options.instances,
    )
    max_bytes = int(options.max_message_mb * 1024 * 1024)
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="rpc"),
        options=[("grpc.max_receive_message_length", max_bytes), ("grpc.so_reuseport", 0)],
    )
    health_servicer = health.HealthServicer()
    server = StnServer(grpc_server, repository, dispatcher, metrics, health_servicer, options)
    stn_pb2_grpc.add_StnServiceServicer_to_server(
        StnServicer(repository, dispatcher, metrics, options.max_images_per_request), grpc_server
    )
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(repository, dispatcher, metrics, options.max_images_per_request, server),
        grpc_server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    service_names = (
        stn_pb2.DESCRIPTOR.services_by_name["StnService"].full_name,
        grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, grpc_server, pool=reflection_pool())
    try:
        port = grpc_server.add_insecure_port(address)
    except RuntimeError as error:
        raise InvalidInputError(f"cannot bind {address}: {error}") from error
    server.port = port
    log.info(
        "server created",
        extra={"address": address, "port": port, "models": [repr(m) for m in repository.models()]},
    )
    return server, port


def serve(
    repository,
    address: str,
    options: ServerOptions,
    runtime_options: RuntimeOptions,
    grace_s: float,
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; returns the exit code (0)."""
    server, port = create_server(repository, address, options, runtime_options)
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("shutting down", extra={"signal": signal.Signals(signum).name, "grace_s": grace_s})
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        log.info("serving", extra={"port": port, "metrics_port": server.metrics_port})
        while not stop.wait(0.5):
            pass
        server.stop(grace_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
