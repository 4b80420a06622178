"""Settings of one server (the `stn-serve serve` flags that are not about ONNX Runtime), each with
what it protects against. README's "Serve" section lists them with their defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from stn_serve.errors import InvalidInputError


@dataclass(frozen=True)
class ServerOptions:
    """Batching:
    max_batch_size: most images merged into one ONNX Runtime run; 1 turns batching off.
    max_queue_delay_us: how long the first request of a batch waits for others to join it.
    instances: ONNX Runtime runs of one model version that may go on at once.

    Admission (each request is counted from its arrival to its answer: decoding, queued, running):
    max_in_flight: requests in the server at once; one more is RESOURCE_EXHAUSTED at once, so a
        burst is shed instead of queueing without bound.
    max_in_flight_per_model: the same for one model (all its versions), so one busy model cannot
        take every slot from the others.
    max_images_per_request: more images in one request is RESOURCE_EXHAUSTED.
    max_message_mb: largest request message accepted (gRPC's max_receive_message_length).

    Decoding (PNG/JPEG uploads; see `stn_serve.imaging`):
    decode_threads: threads that decode encoded images (Pillow runs without the GIL).
    max_decode_mb: memory one image may take to decode, estimated from its header; more is
        INVALID_ARGUMENT before any pixel is decoded (a tiny PNG can claim gigabytes).
    decode_budget_mb: memory all decodes in flight may take together; a decode waits for room.

    Connections and streams:
    max_streams_per_connection: concurrent RPCs on one HTTP/2 connection.
    stream_idle_timeout_s: a stream with nothing in flight that receives no request for this long
        is closed (DEADLINE_EXCEEDED), and so is one whose client reads no answer for this long.
    keepalive_s: the server pings a connection idle this long, and closes it when no answer comes
        within keepalive_timeout_s (a peer that vanished without closing its socket).
    min_client_ping_s: clients may ping no more often than this; more is answered with GOAWAY.
    max_connection_idle_s: a connection with no RPC for this long is closed.
    max_connection_age_s: a connection is closed after this long (±10 %) once its RPCs finish
        within max_connection_age_grace_s, so clients reconnect and spread over new replicas.

    Shutdown (SIGTERM/SIGINT):
    drain_delay_s: health reads NOT_SERVING for this long while requests are still accepted, so
        load balancers stop sending before the server stops accepting.
    grace_s: then accepted requests get this long to finish.

    metrics_port: port of the Prometheus endpoint; 0 picks a free one, None serves none.
    metrics_host: address the Prometheus endpoint binds.
    """

    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    instances: int = 1
    max_in_flight: int = 128
    max_in_flight_per_model: int = 64
    max_images_per_request: int = 64
    max_message_mb: float = 16.0
    decode_threads: int = 2
    max_decode_mb: float = 64.0
    decode_budget_mb: float = 128.0
    max_streams_per_connection: int = 100
    stream_idle_timeout_s: float = 60.0
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    min_client_ping_s: float = 10.0
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 1800.0
    max_connection_age_grace_s: float = 60.0
    drain_delay_s: float = 0.0
    grace_s: float = 10.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self):
        for name, allowed in RANGES.items():
            allowed.check(name, getattr(self, name))
        if self.metrics_port is not None:
            PORTS.check("metrics_port", self.metrics_port)
        if self.max_in_flight_per_model > self.max_in_flight:
            raise InvalidInputError(
                f"max_in_flight_per_model ({self.max_in_flight_per_model}) must not exceed "
                f"max_in_flight ({self.max_in_flight})"
            )
        if self.max_decode_mb > self.decode_budget_mb:
            raise InvalidInputError(
                f"max_decode_mb ({self.max_decode_mb}) must not exceed decode_budget_mb "
                f"({self.decode_budget_mb}): such an image could never be decoded"
            )


@dataclass(frozen=True)
class Range:
    """The values a number may take: finite, from `low` (included unless `open_low`) to `high`."""

    low: float
    high: float
    open_low: bool = False

    def holds(self, value) -> bool:
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.open_low else value >= self.low

    def describe(self) -> str:
        return f"a finite number {'>' if self.open_low else '>='} {self.low:g} and <= {self.high:,}"

    def check(self, name: str, value) -> None:
        if not self.holds(value):
            raise InvalidInputError(f"{name} must be {self.describe()}, got {value}")


# gRPC takes its settings as 32-bit integers, times in milliseconds.
INT32_MAX = 2**31 - 1
COUNT = Range(1, INT32_MAX)
SECONDS = Range(0, INT32_MAX // 1000, open_low=True)
PORTS = Range(0, 65535)
#: The allowed values of each numeric field; the command line's flags check them too.
RANGES = {
    "max_batch_size": COUNT,
    "max_queue_delay_us": Range(0, 60_000_000),
    "instances": COUNT,
    "max_in_flight": COUNT,
    "max_in_flight_per_model": COUNT,
    "max_images_per_request": COUNT,
    "max_message_mb": Range(0, INT32_MAX >> 20, open_low=True),
    "decode_threads": COUNT,
    "max_decode_mb": Range(0, 1 << 30, open_low=True),
    "decode_budget_mb": Range(0, 1 << 30, open_low=True),
    "max_streams_per_connection": COUNT,
    "stream_idle_timeout_s": SECONDS,
    "keepalive_s": SECONDS,
    "keepalive_timeout_s": SECONDS,
    "min_client_ping_s": SECONDS,
    "max_connection_idle_s": SECONDS,
    "max_connection_age_s": SECONDS,
    "max_connection_age_grace_s": SECONDS,
    "drain_delay_s": Range(0, SECONDS.high),
    "grace_s": Range(0, SECONDS.high),
}
