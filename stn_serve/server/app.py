"""Assembling the gRPC server (`create_server`; tests bind port 0) and running it (`StnServer`).

The server is gRPC's asyncio server (`grpc.aio`) on an event loop of its own thread: every RPC
is a coroutine, so idle or slow streams hold no thread and cannot starve other calls or the
health checks; CPU work runs in bounded pools (decoding, `stn_serve.server.decoding`; ONNX
Runtime, `stn_serve.server.batching`). `StnServer`'s methods are called from any other thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from stn_serve._proto.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2
from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.imaging import MIB
from stn_serve.runtime import Batching, ModelRepository, RuntimeOptions
from stn_serve.server.admission import Admission
from stn_serve.server.batching import Dispatcher
from stn_serve.server.decoding import Decoder
from stn_serve.server.inference_service import InferenceServicer
from stn_serve.server.metrics import Metrics
from stn_serve.server.options import ServerOptions
from stn_serve.server.request_path import RequestPath
from stn_serve.server.stn_service import StnServicer
from stn_serve.server.streams import StreamLimits

log = logging.getLogger(__name__)

# A file's dependencies come before it (grpc_service imports model_config).
SERVED_FILES = (stn_pb2, model_config_pb2, grpc_service_pb2, health_pb2, reflection_pb2)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Compression algorithms the server accepts, as gRPC's bitset: identity only. A compressed
# request is refused (UNIMPLEMENTED) before it is inflated: 400 KB of gzip can inflate to 400 MB.
ACCEPTED_COMPRESSION = 1


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A pool holding every served service's file: the generated code keeps its own pool (see
    stn_serve.codegen) and health/reflection sit in protobuf's default one."""
    pool = descriptor_pool.DescriptorPool()
    for module in SERVED_FILES:
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


def server_arguments(options: ServerOptions, reuse_port: bool) -> list[tuple[str, int]]:
    """gRPC server arguments for `options`' limits (see `ServerOptions`)."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    return [
        ("grpc.max_receive_message_length", int(options.max_message_mb * MIB)),
        ("grpc.max_concurrent_streams", options.max_streams_per_connection),
        ("grpc.keepalive_time_ms", ms(options.keepalive_s)),
        ("grpc.keepalive_timeout_ms", ms(options.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(options.min_client_ping_s)),
        ("grpc.max_connection_idle_ms", ms(options.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(options.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(options.max_connection_age_grace_s)),
        ("grpc.compression_enabled_algorithms_bitset", ACCEPTED_COMPRESSION),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


class StnServer:
    """A configured server. `start()` serves; `drain()` shuts down as on SIGTERM: health reads
    NOT_SERVING (for "" and every model) while requests are still accepted for `drain_delay_s`,
    then no new RPC is accepted, open streams answer what they have read and close, and every
    accepted request finishes within `grace_s`; `stop(grace)` does the same without the delay."""

    def __init__(
        self, loop, thread, grpc_server, path, metrics, health_servicer, options, lifecycle
    ):
        self._loop = loop
        self._thread = thread
        self.grpc_server = grpc_server
        self.path = path
        self.repository = path.repository
        self.metrics = metrics
        self.health = health_servicer
        self.options = options
        self.lifecycle = lifecycle
        self.port: int | None = None  # the bound gRPC port, set by create_server
        self.metrics_port: int | None = None
        self.owns_repository = False  # loaded by create_server: unloaded when the server stops
        self.on_rescan = None  # what SIGHUP runs (see create_server's `rescan`)
        self._stopping = threading.Lock()
        self._stopped = False

    @property
    def serving(self) -> bool:
        return self.lifecycle.serving

    def _on_loop(self, coroutine):
        """Run `coroutine` on the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def start(self) -> None:
        if self.options.metrics_port is not None:
            self.metrics_port = self.metrics.serve(
                self.options.metrics_port, self.options.metrics_host
            )
        self._on_loop(self._start())

    async def _start(self) -> None:
        await self.grpc_server.start()
        self.lifecycle.serving = True
        await self.health.set("", SERVING)
        for name in self.repository.names():
            await self.health.set(name, SERVING)

    def set_model_health(self, name: str, serving: bool) -> None:
        """Report model `name` SERVING or NOT_SERVING on grpc.health.v1 (until the drain)."""
        self._on_loop(self.health.set(name, SERVING if serving else NOT_SERVING))

    def rescan(self) -> bool:
        """SIGHUP: run the rescan the server was given (`create_server`'s `rescan`); False when
        it was given none."""
        if self.on_rescan is None:
            return False
        self.on_rescan()
        return True

    def model_changed(self, name: str) -> None:
        """The repository's listener (from any thread): which versions of model `name` are ready
        changed. Health follows, and batchers of versions no longer served are closed; from the
        drain on, nothing does (health reads NOT_SERVING, every batcher closes)."""
        if self.lifecycle.serving:
            asyncio.run_coroutine_threadsafe(self._model_changed(name), self._loop)

    async def _model_changed(self, name: str) -> None:
        await self.health.set(name, SERVING if name in self.repository.names() else NOT_SERVING)
        served = set(self.repository.models())
        dispatcher = self.path.dispatcher
        await dispatcher.retire([model for model in dispatcher.models() if model not in served])

    def drain(self) -> None:
        """Shut down as on SIGTERM (see the class docstring); returns once stopped."""
        self._shut_down(self.options.drain_delay_s, self.options.grace_s)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting at once; accepted requests get `grace` seconds (None: cancelled now)."""
        self._shut_down(0.0, grace)

    def _shut_down(self, delay_s: float, grace_s: float | None) -> None:
        with self._stopping:
            if self._stopped:
                return
            try:
                self._on_loop(self._drain(delay_s, grace_s))
            finally:
                self._stopped = True
                self.metrics.close()
                if self.owns_repository:
                    self.repository.unload()
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
                self._loop.close()

    async def _drain(self, delay_s: float, grace_s: float | None) -> None:
        self.lifecycle.serving = False
        await self.health.enter_graceful_shutdown()
        if delay_s > 0:
            log.info("draining: NOT_SERVING, still accepting", extra={"drain_delay_s": delay_s})
            await asyncio.sleep(delay_s)
        self.lifecycle.draining.set()
        await self.grpc_server.stop(grace_s)
        await self.path.dispatcher.close()
        self.path.decoder.close()


def _loaded(repository, options: ServerOptions, runtime_options: RuntimeOptions | None):
    """`repository` as a loaded `ModelRepository` (a folder is loaded, warmed up at batch 1 and
    at the largest batch); refuses to go on when nothing loaded."""
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
    return repository


class Lifecycle:
    """Where the server is in its life, for the parts that answer differently as it ends:
    `serving` (the Open Inference Protocol's readiness) and `draining` (set when open streams
    must stop reading)."""

    def __init__(self):
        self.serving = False
        self.draining = asyncio.Event()


async def _build(
    repository, address: str, options: ServerOptions, reuse_port: bool, thread
) -> StnServer:
    """The server's parts, created on its event loop (the running one; `thread` runs it)."""
    metrics = Metrics()
    batching = Batching(options.max_batch_size, options.max_queue_delay_us, options.instances)
    path = RequestPath(
        repository,
        Admission(metrics, options.max_in_flight, options.max_in_flight_per_model),
        Dispatcher(metrics, batching),
        Decoder(options.decode_threads, options.max_decode_mb, options.decode_budget_mb),
    )
    lifecycle = Lifecycle()
    limits = StreamLimits(options.stream_idle_timeout_s, lifecycle.draining)
    grpc_server = grpc.aio.server(options=server_arguments(options, reuse_port))
    health_servicer = health.aio.HealthServicer()
    stn_pb2_grpc.add_StnServiceServicer_to_server(
        StnServicer(path, metrics, options.max_images_per_request, limits), grpc_server
    )
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(path, metrics, options.max_images_per_request, limits, lifecycle),
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
        path.decoder.close()
        raise InvalidInputError(f"cannot bind {address}: {error}") from error
    server = StnServer(
        asyncio.get_running_loop(),
        thread,
        grpc_server,
        path,
        metrics,
        health_servicer,
        options,
        lifecycle,
    )
    server.port = port
    return server


def create_server(
    repository,
    address: str = "127.0.0.1:0",
    options: ServerOptions | None = None,
    runtime_options: RuntimeOptions | None = None,
    reuse_port: bool = False,
    rescan: Callable[[], None] | None = None,
    **overrides,
) -> tuple[StnServer, int]:
    """Build a server for `repository` (a folder, or a loaded `ModelRepository`) bound to `address`.

    `overrides` are `ServerOptions` fields (e.g. `max_batch_size=8`). Loads and warms up every
    model of a folder before returning (and unloads them when the server stops; a loaded
    repository stays its caller's); returns the server, not yet started, and the port it bound.
    `reuse_port` lets several processes bind the same port (`serve --processes`). `rescan` is
    what SIGHUP runs (a model control's rescan, in the mode that allows one); without it SIGHUP
    is logged and ignored. Health follows the repository's changes whatever makes them.
    """
    options = dataclasses.replace(options or ServerOptions(), **overrides)
    loads = not isinstance(repository, ModelRepository)
    repository = _loaded(repository, options, runtime_options)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-server", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(
            _build(repository, address, options, reuse_port, thread), loop
        ).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        if loads:
            repository.unload()
        raise
    server.owns_repository = loads
    server.on_rescan = rescan
    repository.add_listener(server.model_changed)
    log.info(
        "server created",
        extra={
            "address": address,
            "port": server.port,
            "models": [repr(m) for m in repository.models()],
        },
    )
    return server, server.port
