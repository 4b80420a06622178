"""Closed-loop load on a server: keep N requests in flight, record each one's latency.

Built for measuring the server rather than the client: the request is serialised once, sent as
raw bytes through the generic call API, and the response bytes are not parsed, so the client's
Python work per request is a few microseconds. The lanes are spread over several connections, so
that a server of several processes sharing a port (which the kernel balances by connection) gets
its share on each. Run it in a process of its own (see `stn_serve.bench.serve`) so it does not
share the server's interpreter lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import grpc

from stn_serve.client.channel import open_channels

PREDICT_METHOD = "/stn.v1.StnService/Predict"


@dataclass
class LoadResult:
    """latencies_s: one per successful request, in completion order; elapsed_s: from the first
    send to the last answer; cpu_s: CPU time this process spent meanwhile (the client's own
    cost); errors: failed requests, with `first_error` describing one."""

    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    errors: int = 0
    first_error: str = ""


class _ClosedLoop:
    """`concurrency` lanes, spread over `calls` (one per connection); each lane sends its next
    request when its previous one is answered, until `max_requests` have been sent or
    `duration_s` has passed."""

    def __init__(
        self,
        calls,
        payload: bytes,
        concurrency: int,
        duration_s: float,
        max_requests: int,
        timeout_s: float,
    ):
        self.calls = calls
        self.payload = payload
        self.concurrency = concurrency
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.timeout_s = timeout_s
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._sent = 0
        self._in_flight = 0
        self._stop_at = 0.0
        self._last = 0.0

    def run(self) -> LoadResult:
        cpu_start = time.process_time()
        start = time.perf_counter()
        self._stop_at = start + self.duration_s
        lanes = min(self.concurrency, self.max_requests)
        with self._lock:
            self._sent = self._in_flight = lanes
        for lane in range(lanes):
            self._send(self.calls[lane % len(self.calls)])
        # Every request carries a deadline, so every lane ends by then.
        self._done.wait(self.duration_s + self.timeout_s + 5.0)
        self.result.elapsed_s = self._last - start
        self.result.cpu_s = time.process_time() - cpu_start
        return self.result

    def _send(self, call) -> None:
        sent_at = time.perf_counter()
        future = call.future(self.payload, timeout=self.timeout_s)
        future.add_done_callback(lambda f: self._answered(f, call, sent_at))

    def _answered(self, future, call, sent_at: float) -> None:
        now = time.perf_counter()
        error = future.exception()
        with self._lock:
            self._last = now
            if error is None:
                self.result.latencies_s.append(now - sent_at)
            else:
                self.result.errors += 1
                self.result.first_error = (
                    self.result.first_error or f"{error.code().name}: {error.details()}"
                )
            again = self._sent < self.max_requests and now < self._stop_at
            if again:
                self._sent += 1
            else:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._done.set()
        if again:
            self._send(call)


def run_load(
    target: str,
    payload: bytes,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    warmup_requests: int = 0,
    timeout_s: float = 30.0,
    connections: int = 1,
) -> LoadResult:
    """Send the serialised PredictRequest `payload` to `target` with `concurrency` requests in
    flight over `connections` connections, for at most `duration_s` seconds and `max_requests`
    requests (after `warmup_requests` unrecorded ones at the same concurrency)."""
    with contextlib.ExitStack() as stack:
        channels = [stack.enter_context(channel) for channel in open_channels(target, connections)]
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        # no (de)serialisers: bytes in, bytes out
        calls = [channel.unary_unary(PREDICT_METHOD) for channel in channels]
        if warmup_requests:
            _ClosedLoop(calls, payload, concurrency, duration_s, warmup_requests, timeout_s).run()
        return _ClosedLoop(calls, payload, concurrency, duration_s, max_requests, timeout_s).run()
