"""What `stn-serve bench serve` measures: the model in-process, and servers under closed-loop load
from a client process. Serving side: never imports torch.

The load comes from `stn_serve.client.load` in a separate process (pre-serialised raw-tensor
requests, responses not parsed), so the client does not share the server's interpreter lock.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BATCHING_ON, BATCHING_OFF, NO_OP = "batching on", "batching off", "no-op handler"


@dataclass
class InProcess:
    """`OnnxModel.predict` at one batch size, called from one thread."""

    batch_size: int
    images_per_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class Served:
    """One server setting under load at one concurrency."""

    setting: str  # BATCHING_ON, BATCHING_OFF or NO_OP (gRPC alone: the floor under the server)
    images_per_request: int
    concurrency: int
    requests: int
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_us: float  # client process CPU per request
    server_cpu_us: float  # the server process's CPU per request (nothing else runs there)
    mean_batch: float  # images per ONNX Runtime run, from the server's metrics (nan for NO_OP)
    errors: int
    first_error: str


@dataclass(frozen=True)
class LoadSettings:
    """How each served setting is loaded."""

    concurrency: tuple[int, ...]
    duration_s: float
    max_requests: int


def percentiles_ms(latencies_s) -> tuple[float, float, float]:
    """p50, p90 and p99 of `latencies_s` in milliseconds (nan when there are none)."""
    if len(latencies_s) == 0:
        return (float("nan"),) * 3
    p50, p90, p99 = np.percentile(np.asarray(latencies_s) * 1e3, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def measure_in_process(model, batch_sizes, duration_s: float, max_runs: int) -> list[InProcess]:
    """images/s and per-call latency of `model.predict` at each batch size, after a warm-up run."""
    rng = np.random.default_rng(0)
    results = []
    for batch_size in batch_sizes:
        images = rng.random((batch_size, *model.spec.input_shape), dtype=np.float32)
        model.predict(images)
        latencies = []
        start = time.perf_counter()
        while len(latencies) < max_runs and time.perf_counter() - start < duration_s:
            begin = time.perf_counter()
            model.predict(images)
            latencies.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - start
        p50, _, p99 = percentiles_ms(latencies)
        results.append(InProcess(batch_size, batch_size * len(latencies) / elapsed, p50, p99))
    return results


def payloads(model, images_per_request: int) -> tuple[bytes, bytes]:
    """A serialised stn.v1 PredictRequest carrying raw float32 tensors, and a PredictResponse of
    the size the server answers it with (for the no-op server)."""
    from stn_serve._proto.stn.v1 import stn_pb2
    from stn_serve.client.tensors import to_tensor

    rng = np.random.default_rng(1)
    images = rng.random((images_per_request, *model.spec.input_shape), dtype=np.float32)
    request = stn_pb2.PredictRequest(
        model=model.name,
        version=model.version,
        top_k=1,
        images=[stn_pb2.Image(tensor=to_tensor(image)) for image in images],
    )
    crop = to_tensor(np.zeros(model.spec.crop_shape, np.float32))
    prediction = stn_pb2.Prediction(
        top_k=[stn_pb2.ClassScore(index=0, label=model.spec.labels[0], probability=1.0)],
        crop=crop,
        theta=[0.0] * model.spec.num_params,
    )
    response = stn_pb2.PredictResponse(
        model=model.name, version=model.version, predictions=[prediction] * images_per_request
    )
    return request.SerializeToString(), response.SerializeToString()


def measure_load(
    port: int,
    setting: str,
    payload: bytes,
    images_per_request: int,
    load: LoadSettings,
    clients: ProcessPoolExecutor,
    batches=lambda: (float("nan"), 1.0),
) -> list[Served]:
    """Closed-loop load on 127.0.0.1:`port` at each concurrency, from the client process.

    batches: returns the server's running (images run, ONNX Runtime runs) totals.
    """
    from stn_serve.client.load import run_load

    results = []
    for concurrency in load.concurrency:
        warmup = 4 * concurrency
        images_before, runs_before = batches()
        cpu_start = time.process_time()
        answered = clients.submit(
            run_load,
            f"127.0.0.1:{port}",
            payload,
            concurrency,
            load.duration_s,
            load.max_requests,
            warmup_requests=warmup,
        ).result()
        # Nothing but the server runs in this process meanwhile; its CPU covers the warm-up too.
        server_cpu = time.process_time() - cpu_start
        images_after, runs_after = batches()
        mean_batch = (images_after - images_before) / max(runs_after - runs_before, 1.0)
        p50, p90, p99 = percentiles_ms(answered.latencies_s)
        done = len(answered.latencies_s)
        sent = max(done + answered.errors, 1)
        elapsed = answered.elapsed_s
        results.append(
            Served(
                setting=setting,
                images_per_request=images_per_request,
                concurrency=concurrency,
                requests=done,
                images_per_s=done * images_per_request / elapsed if elapsed > 0 else 0.0,
                p50_ms=p50,
                p90_ms=p90,
                p99_ms=p99,
                client_cpu_us=1e6 * answered.cpu_s / sent,
                server_cpu_us=1e6 * server_cpu / (sent + warmup),
                mean_batch=mean_batch,
                errors=answered.errors,
                first_error=answered.first_error,
            )
        )
    return results


def measure_served(
    repository: Path,
    model,
    runtime_options,
    server_settings: dict,
    payload: bytes,
    images_per_request: int,
    batching: bool,
    load: LoadSettings,
    clients: ProcessPoolExecutor,
) -> list[Served]:
    """The stn-serve server (`create_server` on 127.0.0.1 port 0, in this process) with dynamic
    batching on or off; `server_settings` are `ServerOptions` fields."""
    from stn_serve.server import create_server

    most = max(load.concurrency)
    settings = dict(server_settings)
    if not batching:
        settings.update(max_batch_size=1, max_queue_delay_us=0)
    server, port = create_server(
        repository,
        "127.0.0.1:0",
        runtime_options=runtime_options,
        max_queue_size=max(128, 2 * most),
        max_images_per_request=max(64, images_per_request),
        workers=max(32, most),
        **settings,
    )
    server.start()
    labels = {"model": model.name, "version": str(model.version)}

    def batches() -> tuple[float, float]:
        return (
            server.metrics.sample("stn_batch_size_sum", labels) or 0.0,
            server.metrics.sample("stn_batch_size_count", labels) or 0.0,
        )

    try:
        setting = BATCHING_ON if batching else BATCHING_OFF
        return measure_load(port, setting, payload, images_per_request, load, clients, batches)
    finally:
        server.stop(grace=None)


def measure_no_op(
    answer: bytes,
    payload: bytes,
    images_per_request: int,
    load: LoadSettings,
    clients: ProcessPoolExecutor,
) -> list[Served]:
    """A gRPC server whose Predict returns a canned answer without parsing the request: what gRPC
    Python itself costs here, the floor under the real server's latency and CPU per request."""
    import grpc

    handler = grpc.method_handlers_generic_handler(
        "stn.v1.StnService",
        {"Predict": grpc.unary_unary_rpc_method_handler(lambda request, context: answer)},
    )
    server = grpc.server(ThreadPoolExecutor(max(32, max(load.concurrency))), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        return measure_load(port, NO_OP, payload, images_per_request, load, clients)
    finally:
        server.stop(grace=None)
