"""Settings of one server (the `stn-serve serve` flags that are not about ONNX Runtime), each with
what it protects against. README's "Serve" section lists them with their defaults."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from stn_serve.contract.model_config import (
    DEFAULT_INSTANCES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
)
from stn_serve.errors import InvalidInputError
from stn_serve.runtime.options import ModelControlOptions

#: Where a server listens unless told otherwise: this machine only (see `ServerOptions`).
LOOPBACK = "127.0.0.1"


def grpc_address(host: str, port: int) -> str:
    """`host:port` as gRPC takes it (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or "localhost") is this machine's loopback; a name that
    would need resolving is taken as not."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def exposed_in_plaintext(host: str, tls: bool) -> bool:
    """Whether a server bound to `host` would serve without TLS beyond this machine."""
    return not tls and not is_loopback(host)


@dataclass(frozen=True)
class ServerOptions:
    """Batching (defaults: a model's config.pbtxt overrides each where it sets it):
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
    metrics_host: address the Prometheus endpoint binds (loopback: metrics name the models and
        their traffic, for whoever can reach the port).

    Transport security and access (`stn_serve.server.security`):
    tls_cert, tls_key: PEM certificate chain and its unencrypted key: the gRPC port serves TLS
        (without them, plaintext: anyone on the path reads and alters requests and answers).
    tls_client_ca: PEM CA certificates: clients must present a certificate one of them signed
        (mutual TLS), so that only holders of such a certificate connect at all.
    auth_token_file: a file holding a bearer token every call must send, except health checks
        (probes and load balancers cannot send one); without TLS the token travels in the clear.
    reflection: serve gRPC server reflection (lets anyone who connects list the services).
    health_port, health_host: a second, plaintext port answering health Check only (None: no
        such port), for probes that cannot speak TLS; bind it to the pod's own address.

    model_control: what loads at start and what may change the served models afterwards
        (Triton's model control: none, poll, explicit).
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    instances: int = DEFAULT_INSTANCES
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
    metrics_host: str = LOOPBACK
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None
    reflection: bool = True
    health_port: int | None = None
    health_host: str = LOOPBACK
    model_control: ModelControlOptions = field(default_factory=ModelControlOptions)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def __post_init__(self):
        for name, allowed in RANGES.items():
            allowed.check(name, getattr(self, name))
        for name in ("metrics_port", "health_port"):
            if getattr(self, name) is not None:
                PORTS.check(name, getattr(self, name))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInputError(
                "TLS needs both a certificate and its key (--tls-cert, --tls-key)"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInputError(
                "mutual TLS (--tls-client-ca) needs the server's own certificate and key "
                "(--tls-cert, --tls-key)"
            )
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
