"""Prometheus metrics of one server, in a registry of its own (several servers share a process in
tests). With `serve --processes N` every process writes its values to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode) and the supervising process
serves them summed over all processes (`serve_multiprocess`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from stn_serve.errors import InvalidInputError

# fmt: off
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# fmt: on
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PER_VERSION = ["model", "version"]


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stn_requests",
            "RPCs answered, by method, model and status code",
            ["method", "model", "code"],
            registry=self.registry,
        )
        self.latency = self._histogram(
            "stn_request_latency_seconds", "time to answer an RPC", ["method", "model"]
        )
        self.queue_time = self._histogram(
            "stn_queue_seconds", "time a request waited in the batch queue"
        )
        self.inference_time = self._histogram(
            "stn_inference_seconds", "time of one ONNX Runtime run"
        )
        self.batch_size = self._histogram(
            "stn_batch_size", "images per ONNX Runtime run", buckets=BATCH_BUCKETS
        )
        # Gauges are summed over the live processes in multiprocess mode.
        self.queue_depth = Gauge(
            "stn_queue_depth",
            "requests waiting in the batch queue",
            PER_VERSION,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "stn_in_flight",
            "requests admitted and not yet answered (decoding, queued or running), by model",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._answered: dict[tuple[str, str, str], tuple] = {}
        self._in_flight: dict[str, Gauge] = {}
        self._http = None

    def answered(self, method: str, model: str, code: str, seconds: float) -> None:
        """Count one answered RPC and its latency (label children are looked up once each:
        this runs for every request)."""
        children = self._answered.get((method, model, code))
        if children is None:
            children = (
                self.requests.labels(method, model, code),
                self.latency.labels(method, model),
            )
            self._answered[(method, model, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def in_flight_of(self, model: str) -> Gauge:
        gauge = self._in_flight.get(model)
        if gauge is None:
            gauge = self._in_flight[model] = self.in_flight.labels(model)
        return gauge

    def _histogram(
        self, name, documentation, labels=PER_VERSION, buckets=LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose the registry over HTTP at /metrics; returns the bound port."""
        self._http = serve_registry(self.registry, port, host)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def sample(self, name: str, labels: dict) -> float | None:
        return self.registry.get_sample_value(name, labels)


def serve_registry(registry: CollectorRegistry, port: int, host: str):
    """An HTTP server answering /metrics from `registry`, serving in a thread of its own."""
    try:
        http, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise InvalidInputError(f"cannot serve metrics on {host}:{port}: {error}") from error
    return http


def serve_multiprocess(port: int, host: str):
    """Serve the values every process wrote to PROMETHEUS_MULTIPROC_DIR, summed, at /metrics."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return serve_registry(registry, port, host)
