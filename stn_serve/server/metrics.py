"""Prometheus metrics of one server, in a registry of its own (several servers share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.queue_depth = Gauge(
            "stn_queue_depth",
            "requests waiting in the batch queue",
            PER_VERSION,
            registry=self.registry,
        )
        self._http = None

    def _histogram(
        self, name, documentation, labels=PER_VERSION, buckets=LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose the registry over HTTP at /metrics; returns the bound port."""
        try:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise InvalidInputError(f"cannot serve metrics on {host}:{port}: {error}") from error
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def sample(self, name: str, labels: dict) -> float | None:
        return self.registry.get_sample_value(name, labels)
