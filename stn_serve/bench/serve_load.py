"""What `stn-serve bench serve` measures: the model in-process, and servers under closed-loop load
from a client process. Serving side: never imports torch.

Every server runs in processes of its own, as in production: stn-serve through its command line
(`stn-serve serve --processes N`), the bare gRPC servers as spawned processes sharing a port the
same way. A server's CPU time is read from /proc for each of its processes, so the figure covers
exactly the server. The load comes from `stn_serve.client.load` in another process
(pre-serialised raw-tensor requests, responses not parsed, several connections).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STN_SERVE, STN_SERVE_NO_BATCHING = "stn-serve", "stn-serve, batching off"
BARE_SYNC, BARE_AIO = "bare gRPC (sync)", "bare gRPC (aio)"
START_TIMEOUT_S = 300.0


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

    setting: str  # STN_SERVE, STN_SERVE_NO_BATCHING, BARE_SYNC or BARE_AIO
    processes: int
    images_per_request: int
    concurrency: int
    requests: int
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_us: float  # the client process's CPU per request
    server_cpu_us: float  # the server's processes' CPU per request
    mean_batch: float  # images per ONNX Runtime run, from the server's metrics (nan for bare)
    errors: int
    first_error: str

    @property
    def requests_per_s(self) -> float:
        return self.images_per_s / self.images_per_request


@dataclass(frozen=True)
class LoadSettings:
    """How each served setting is loaded."""

    concurrency: tuple[int, ...]
    duration_s: float
    max_requests: int
    connections: int


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
    the size the server answers it with (for the bare servers)."""
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


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes `pids`, from /proc."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            # Fields after the command name (which may hold spaces): utime and stime are the
            # 12th and 13th.
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class ServerUnderTest:
    """A server in processes of its own: its port, its pids (for CPU time) and, for stn-serve,
    its metrics endpoint (for the batch sizes)."""

    def __init__(self, port: int, pids: list[int], metrics_port: int | None = None):
        self.port = port
        self.pids = pids
        self.metrics_port = metrics_port

    def batches(self) -> tuple[float, float]:
        """(images run, ONNX Runtime runs) so far; (nan, 1) for a server without metrics."""
        if self.metrics_port is None:
            return float("nan"), 1.0
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as answer:
            text = answer.read().decode()
        totals = {"stn_batch_size_sum": 0.0, "stn_batch_size_count": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in totals:
                    totals[sample.name] += sample.value
        return totals["stn_batch_size_sum"], totals["stn_batch_size_count"]


@contextlib.contextmanager
def stn_serve(repository: Path, processes: int, flags: list[str]):
    """`stn-serve serve` on 127.0.0.1 port 0 with `flags`, until the block ends (SIGTERM)."""
    with tempfile.TemporaryFile("w+") as log:
        command = [
            sys.executable, "-m", "stn_serve", "serve", "--repository", str(repository),
            "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
            "--processes", str(processes), "--grace-s", "5", *flags,
        ]  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            # With several processes each worker logs "serving", then the supervisor, naming
            # every worker.
            serving = _wait_for_serving(server, log, "pids" if processes > 1 else "pid")
            pids = [server.pid, *serving["pids"]] if processes > 1 else [serving["pid"]]
            yield ServerUnderTest(serving["port"], pids, serving["metrics_port"])
        finally:
            server.terminate()
            server.wait(START_TIMEOUT_S)


def _wait_for_serving(server: subprocess.Popen, log, field: str) -> dict:
    """The server's "serving" log record that holds `field`, once it has written it."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        log.seek(0)
        for line in log:
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("message") == "serving" and field in record:
                return record
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited with {server.returncode}: {log.read()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"the server did not serve within {START_TIMEOUT_S:g} s")


def bare_server(kind: str, port: int, answers: dict[int, bytes], threads: int, ready) -> None:
    """A gRPC server whose Predict answers a canned response without parsing the request (what
    gRPC Python itself costs here), on `port` shared with SO_REUSEPORT; runs until terminated.
    `answers` holds the response for each request size in bytes."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    def method(handler):
        return grpc.method_handlers_generic_handler(
            "stn.v1.StnService", {"Predict": grpc.unary_unary_rpc_method_handler(handler)}
        )

    address, options = f"127.0.0.1:{port}", [("grpc.so_reuseport", 1)]
    if kind == BARE_SYNC:
        server = grpc.server(
            ThreadPoolExecutor(threads),
            handlers=[method(lambda request, context: answers[len(request)])],
            options=options,
        )
        server.add_insecure_port(address)
        server.start()
        ready.set()
        server.wait_for_termination()
        return

    async def handler(request, context):
        return answers[len(request)]

    async def main():
        server = grpc.aio.server(handlers=[method(handler)], options=options)
        server.add_insecure_port(address)
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


@contextlib.contextmanager
def bare(kind: str, processes: int, answers: dict[int, bytes], threads: int):
    """`processes` bare servers of `kind` on one port, until the block ends."""
    from stn_serve.server.processes import reserved_port

    context = multiprocessing.get_context("spawn")
    with reserved_port("127.0.0.1", 0) as port:
        ready = [context.Event() for _ in range(processes)]
        workers = [
            context.Process(target=bare_server, args=(kind, port, answers, threads, event))
            for event in ready
        ]
        for worker in workers:
            worker.start()
        try:
            for event in ready:
                if not event.wait(START_TIMEOUT_S):
                    raise RuntimeError(f"a {kind} server did not start")
            yield ServerUnderTest(port, [worker.pid for worker in workers])
        finally:
            for worker in workers:
                worker.terminate()
                worker.join()


def measure_load(
    server: ServerUnderTest,
    setting: str,
    processes: int,
    payload: bytes,
    images_per_request: int,
    concurrency: tuple[int, ...],
    load: LoadSettings,
    clients: ProcessPoolExecutor,
) -> list[Served]:
    """Closed-loop load on `server` at each concurrency, from the client process."""
    from stn_serve.client.load import run_load

    results = []
    for lanes in concurrency:
        warmup = 4 * lanes
        images_before, runs_before = server.batches()
        cpu_before = cpu_seconds(server.pids)
        answered = clients.submit(
            run_load,
            f"127.0.0.1:{server.port}",
            payload,
            lanes,
            load.duration_s,
            load.max_requests,
            warmup_requests=warmup,
            connections=min(load.connections, lanes),
        ).result()
        server_cpu = cpu_seconds(server.pids) - cpu_before  # covers the warm-up too
        images_after, runs_after = server.batches()
        p50, p90, p99 = percentiles_ms(answered.latencies_s)
        done = len(answered.latencies_s)
        sent = max(done + answered.errors, 1)
        elapsed = answered.elapsed_s
        results.append(
            Served(
                setting=setting,
                processes=processes,
                images_per_request=images_per_request,
                concurrency=lanes,
                requests=done,
                images_per_s=done * images_per_request / elapsed if elapsed > 0 else 0.0,
                p50_ms=p50,
                p90_ms=p90,
                p99_ms=p99,
                client_cpu_us=1e6 * answered.cpu_s / sent,
                server_cpu_us=1e6 * server_cpu / (sent + warmup),
                mean_batch=(images_after - images_before) / max(runs_after - runs_before, 1.0),
                errors=answered.errors,
                first_error=answered.first_error,
            )
        )
    return results
