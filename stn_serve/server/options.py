"""Settings of one server (the `stn-serve serve` flags that are not about ONNX Runtime)."""

from __future__ import annotations

from dataclasses import dataclass

from stn_serve.errors import InvalidInputError


@dataclass(frozen=True)
class ServerOptions:
    """max_batch_size: most images merged into one ONNX Runtime run; 1 turns batching off.
    max_queue_delay_us: how long the first request of a batch waits for others to join it.
    max_queue_size: requests waiting per model version; one more is RESOURCE_EXHAUSTED.
    max_images_per_request: more images in one request is RESOURCE_EXHAUSTED.
    max_message_mb: largest request message accepted (grpc max_receive_message_length).
    workers: gRPC handler threads (each in-flight request holds one).
    instances: ONNX Runtime runs of one model version that may go on at once.
    metrics_port: port of the Prometheus endpoint; 0 picks a free one, None serves none.
    metrics_host: address the Prometheus endpoint binds.
    """

    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    max_queue_size: int = 128
    max_images_per_request: int = 64
    max_message_mb: float = 16.0
    workers: int = 32
    instances: int = 1
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self):
        for name in (
            "max_batch_size",
            "max_queue_size",
            "max_images_per_request",
            "workers",
            "instances",
        ):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0:
            raise InvalidInputError(
                f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}"
            )
        if self.max_message_mb <= 0:
            raise InvalidInputError(f"max_message_mb must be > 0, got {self.max_message_mb}")
