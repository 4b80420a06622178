"""Assembling the gRPC server (`create_server`; tests bind port 0) and running it (`StnServer`).

The server is gRPC's asyncio server (`grpc.aio`) on an event loop of its own thread: every RPC
is a coroutine, so idle or slow streams hold no thread and cannot starve other calls or the
health checks; CPU work runs in bounded pools (decoding, `stn_serve.server.decoding`; ONNX
Runtime, `stn_serve.server.batching`). `StnServer`'s methods are called from any other thread.

What it serves follows the model repository as model control changes it (`ModelControl`: none,
poll or explicit): health, the batchers, and the Open Inference Protocol's repository extension.
Its transport is plaintext or TLS (mutual with a client CA), optionally behind a bearer token,
with a plaintext health-only port beside it where probes need one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from stn_serve._proto.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2
from stn_serve._proto.stn.v1 import stn_pb2
from stn_serve.contract.auth import read_token
from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.imaging import MIB
from stn_serve.runtime import Batching, ModelControl, ModelRepository, RuntimeOptions
from stn_serve.server.admission import Admission
from stn_serve.server.batching import Dispatcher
from stn_serve.server.decoding import Decoder
from stn_serve.server.health_port import create_health_server
from stn_serve.server.inference_service import InferenceServicer
from stn_serve.server.metrics import Metrics
from stn_serve.server.options import LOOPBACK, ServerOptions, grpc_address
from stn_serve.server.repository_service import RepositoryService
from stn_serve.server.request_path import RequestPath
from stn_serve.server.security import TokenAuthInterceptor, server_credentials
from stn_serve.server.statistics import InferenceStatistics
from stn_serve.server.stn_service import StnServicer, add_stn_service
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

    def __init__(self, loop, thread, parts: _Parts, options: ServerOptions):
        self._loop = loop
        self._thread = thread
        self.grpc_server = parts.grpc_server
        self.health_server = parts.health_server  # the plaintext health port, or None
        self.path = parts.path
        self.control = parts.control
        self.repository = parts.path.repository
        self.metrics = parts.metrics
        self.health = parts.health
        self.options = options
        self.lifecycle = parts.lifecycle
        self.port: int | None = None  # the bound gRPC port, set by create_server
        self.health_port: int | None = None  # the bound health port
        self.metrics_port: int | None = None
        self.owns_repository = False  # loaded by create_server: unloaded when the server stops
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
        if self.health_server is not None:
            await self.health_server.start()
        self.lifecycle.serving = True
        await self.health.set("", SERVING)
        for name in self.repository.names():
            await self.health.set(name, SERVING)

    def rescan(self) -> bool:
        """SIGHUP: ask model control for a rescan of the repository (poll mode); False, and
        nothing done, in the modes that take none."""
        return self.control.request_rescan()

    def model_changed(self, name: str) -> None:
        """The repository's listener (from any thread): which versions of model `name` answer
        changed. Health follows (SERVING only while a version is ready), and the batchers of
        versions unloaded are closed; from the drain on, nothing does (health reads NOT_SERVING,
        every batcher closes)."""
        if self.lifecycle.serving:
            asyncio.run_coroutine_threadsafe(self._model_changed(name), self._loop)

    async def _model_changed(self, name: str) -> None:
        await self.health.set(name, SERVING if name in self.repository.names() else NOT_SERVING)
        # A version that is draining still has requests in its batcher: only once it has been
        # unloaded (after the drain) is its batcher closed.
        dispatcher = self.path.dispatcher
        await dispatcher.retire([model for model in dispatcher.models() if not model.ready])

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
            self.control.stop(timeout=0)  # no rescan starts from now on
            try:
                self._on_loop(self._drain(delay_s, grace_s))
            finally:
                self._stopped = True
                self.metrics.close()
                self.control.stop()  # waits for a rescan under way
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
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.grpc_server.stop(grace_s)
        await self.path.dispatcher.close()
        self.path.decoder.close()


def _controlled(repository, options: ServerOptions, runtime_options) -> tuple[ModelControl, bool]:
    """A model control over `repository`, started, and whether the server owns the repository.

    A folder is loaded as `options.model_control` says (warmed up at batch 1 and at the largest
    batch) and belongs to the server. A loaded `ModelRepository` stays its caller's, under model
    control "none" (the caller changes it). Refuses to go on when no model loaded, unless
    explicit model control was asked to load none at start.
    """
    if isinstance(repository, ModelRepository):
        if not repository.models():
            failures = {str(path): reason for path, reason in repository.failures.items()}
            raise NotFoundError(
                f"no model in {repository.root} could be loaded: {failures or 'it is empty'}"
            )
        return ModelControl(repository), False
    runtime_options = runtime_options or RuntimeOptions()
    warmup = tuple(sorted({1, options.max_batch_size}))
    runtime_options = dataclasses.replace(runtime_options, warmup_batch_sizes=warmup)
    loaded = ModelRepository(Path(repository), runtime_options)
    control = ModelControl(loaded, options.model_control)
    try:
        control.start()
    except BaseException:
        control.stop()
        control.repository.unload()
        raise
    return control, True


@dataclasses.dataclass(frozen=True)
class Transport:
    """How the gRPC port is secured: TLS credentials (None: plaintext) and the interceptors
    (the bearer-token check), made from `ServerOptions` before any model loads, so that a bad
    file stops the start at once."""

    credentials: grpc.ServerCredentials | None
    interceptors: tuple

    @classmethod
    def of(cls, options: ServerOptions) -> Transport:
        credentials = None
        if options.tls:
            credentials = server_credentials(
                options.tls_cert, options.tls_key, options.tls_client_ca
            )
        interceptors = ()
        if options.auth_token_file is not None:
            interceptors = (TokenAuthInterceptor(read_token(options.auth_token_file)),)
        return cls(credentials, interceptors)


class Lifecycle:
    """Where the server is in its life, for the parts that answer differently as it ends:
    `serving` (the Open Inference Protocol's readiness) and `draining` (set when open streams
    must stop reading)."""

    def __init__(self):
        self.serving = False
        self.draining = asyncio.Event()


@dataclasses.dataclass
class _Parts:
    grpc_server: grpc.aio.Server
    health_server: grpc.aio.Server | None
    path: RequestPath
    control: ModelControl
    metrics: Metrics
    health: health.aio.HealthServicer
    lifecycle: Lifecycle


def _add_services(grpc_server, parts: _Parts, repository_service, options: ServerOptions):
    """Register stn.v1, the Open Inference Protocol, health and (unless turned off) reflection."""
    path, metrics, lifecycle = parts.path, parts.metrics, parts.lifecycle
    limits = StreamLimits(options.stream_idle_timeout_s, lifecycle.draining)
    add_stn_service(StnServicer(path, metrics, options.max_images_per_request, limits), grpc_server)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(
            path, metrics, options.max_images_per_request, limits, lifecycle, repository_service
        ),
        grpc_server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(parts.health, grpc_server)
    if options.reflection:
        service_names = (
            stn_pb2.DESCRIPTOR.services_by_name["StnService"].full_name,
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(service_names, grpc_server, pool=reflection_pool())


async def _build(
    control: ModelControl,
    address: str,
    options: ServerOptions,
    transport: Transport,
    reuse_port: bool,
    thread,
) -> StnServer:
    """The server's parts, created on its event loop (the running one; `thread` runs it)."""
    repository = control.repository
    metrics = Metrics()
    statistics = InferenceStatistics()
    defaults = Batching(options.max_batch_size, options.max_queue_delay_us, options.instances)
    path = RequestPath(
        repository,
        Admission(metrics, options.max_in_flight, options.max_in_flight_per_model),
        Dispatcher(
            metrics, statistics, lambda model: repository.settings(model.name).batching(defaults)
        ),
        Decoder(options.decode_threads, options.max_decode_mb, options.decode_budget_mb),
        statistics,
    )
    grpc_server = grpc.aio.server(
        options=server_arguments(options, reuse_port), interceptors=transport.interceptors
    )
    parts = _Parts(
        grpc_server, None, path, control, metrics, health.aio.HealthServicer(), Lifecycle()
    )
    _add_services(grpc_server, parts, RepositoryService(control, statistics, defaults), options)
    health_port = None
    try:
        if transport.credentials is None:
            port = grpc_server.add_insecure_port(address)
        else:
            port = grpc_server.add_secure_port(address, transport.credentials)
        if options.health_port is not None:
            parts.health_server, health_port = create_health_server(
                parts.health, grpc_address(options.health_host, options.health_port), reuse_port
            )
    except RuntimeError as error:
        path.decoder.close()
        raise InvalidInputError(f"cannot bind {address}: {error}") from error
    except InvalidInputError:
        path.decoder.close()
        raise
    server = StnServer(asyncio.get_running_loop(), thread, parts, options)
    server.port, server.health_port = port, health_port
    return server


def create_server(
    repository,
    address: str = f"{LOOPBACK}:0",
    options: ServerOptions | None = None,
    runtime_options: RuntimeOptions | None = None,
    reuse_port: bool = False,
    **overrides,
) -> tuple[StnServer, int]:
    """Build a server for `repository` (a folder, or a loaded `ModelRepository`) bound to `address`.

    `overrides` are `ServerOptions` fields (e.g. `max_batch_size=8`, `tls_cert=...`). A folder
    is loaded (and warmed up) here as `options.model_control` says, then kept in step with its
    files in poll mode, and unloaded when the server stops; a loaded repository stays its
    caller's. Returns the server, not yet started, and the port it bound. `reuse_port` lets
    several processes bind the same ports (`serve --processes`). SIGHUP (`StnServer.rescan`)
    rescans in poll mode. Health follows the repository's changes whatever makes them.
    """
    options = dataclasses.replace(options or ServerOptions(), **overrides)
    transport = Transport.of(options)  # bad certificate or token files fail before loading
    control, owned = _controlled(repository, options, runtime_options)
    repository = control.repository
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-server", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(
            _build(control, address, options, transport, reuse_port, thread), loop
        ).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        control.stop()
        if owned:
            repository.unload()
        raise
    server.owns_repository = owned
    repository.add_listener(server.model_changed)
    log.info(
        "server created",
        extra={
            "address": address,
            "port": server.port,
            "tls": "mutual" if options.tls_client_ca else bool(options.tls),
            "token": options.auth_token_file is not None,
            "model_control": options.model_control.mode,
            "health_port": server.health_port,
            "models": [repr(m) for m in repository.models()],
        },
    )
    return server, server.port
