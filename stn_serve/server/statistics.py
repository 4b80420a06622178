"""Per model version inference counts and durations, as the Open Inference Protocol's
ModelStatistics reports them (Triton's meaning for each figure).

The request path feeds `InferenceStatistics` (`stn_serve.server.request_path`): `request(model)`
times each request that reached a model version, from its lease to its answer; the batcher
(`stn_serve.server.batching`) calls `record_execution` once per model run (one batch), with how
long each request in it waited in the queue. `snapshot` copies the totals out for the
ModelStatistics answer. No gRPC or protobuf here.

ONNX Runtime copies the inputs in and the outputs out within its run, so `compute_infer` covers
the whole run; the protocol's `compute_input` and `compute_output` stay empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Duration:
    """How many times something happened and the nanoseconds it took in total."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class VersionCounts:
    """One model version's totals. Request figures (success, fail, queue, compute_infer) count
    requests; `execution_count` and `batches` (compute_infer by batch size) count model runs;
    `inference_count` counts the images run; `last_inference_ms` is the time of the last
    success (milliseconds since the epoch)."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_infer: Duration = Duration()
    batches: dict[int, Duration] = field(default_factory=dict)


class _Totals:
    """The running totals of one version: [count, ns] pairs, changed under the lock."""

    __slots__ = ("batches", "compute_infer", "executions", "fail", "inferences", "last", "queue",
                 "success")  # fmt: skip

    def __init__(self):
        self.last = self.inferences = self.executions = 0
        self.success, self.fail, self.queue, self.compute_infer = [0, 0], [0, 0], [0, 0], [0, 0]
        self.batches: dict[int, list[int]] = {}

    def snapshot(self) -> VersionCounts:
        return VersionCounts(
            last_inference_ms=self.last,
            inference_count=self.inferences,
            execution_count=self.executions,
            success=Duration(*self.success),
            fail=Duration(*self.fail),
            queue=Duration(*self.queue),
            compute_infer=Duration(*self.compute_infer),
            batches={size: Duration(*pair) for size, pair in self.batches.items()},
        )


def _add(pair: list[int], ns: int, count: int = 1) -> None:
    pair[0] += count
    pair[1] += ns


class InferenceStatistics:
    """Totals per (model, version); safe to feed from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, int], _Totals] = {}

    def _of(self, name: str, version: int) -> _Totals:
        totals = self._totals.get((name, version))
        if totals is None:
            totals = self._totals[(name, version)] = _Totals()
        return totals

    def request(self, model) -> RequestTiming:
        """Time one request for `model` (an OnnxModel): `with statistics.request(model):`
        around its work; a request that leaves the block with an error (or cancelled) counts
        as failed."""
        return RequestTiming(self, model.name, model.version)

    def record_request(self, name: str, version: int, *, ok: bool, duration_ns: int) -> None:
        """One request answered, OK or failed; `duration_ns` from its lease on the version to
        its answer."""
        with self._lock:
            totals = self._of(name, version)
            if ok:
                totals.last = time.time_ns() // 1_000_000
                _add(totals.success, duration_ns)
            else:
                _add(totals.fail, duration_ns)

    def record_execution(
        self,
        name: str,
        version: int,
        *,
        batch_size: int,
        compute_infer_ns: int,
        queue_ns: Sequence[int] = (),
    ) -> None:
        """One model run of `batch_size` images (inferences) that took `compute_infer_ns`, for
        the requests that waited `queue_ns` each in the queue (each request counts the run it
        was part of, as Triton counts it)."""
        with self._lock:
            totals = self._of(name, version)
            totals.inferences += batch_size
            totals.executions += 1
            _add(totals.batches.setdefault(batch_size, [0, 0]), compute_infer_ns)
            _add(totals.queue, sum(queue_ns), len(queue_ns))
            _add(totals.compute_infer, compute_infer_ns * len(queue_ns), len(queue_ns))

    def snapshot(self, name: str, version: int) -> VersionCounts:
        """The totals of one version so far (zeros when it has seen nothing)."""
        with self._lock:
            totals = self._totals.get((name, version))
            return totals.snapshot() if totals else VersionCounts()


class RequestTiming:
    """One request's timing (see `InferenceStatistics.request`); a plain class rather than a
    generator-based context manager, since it runs on every request."""

    __slots__ = ("_name", "_start", "_statistics", "_version")

    def __init__(self, statistics: InferenceStatistics, name: str, version: int):
        self._statistics, self._name, self._version = statistics, name, version

    def __enter__(self) -> RequestTiming:
        self._start = time.perf_counter_ns()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._statistics.record_request(
            self._name,
            self._version,
            ok=kind is None,
            duration_ns=time.perf_counter_ns() - self._start,
        )
