"""Per model version inference counts and durations, as the Open Inference Protocol's
ModelStatistics reports them (Triton's meaning for each figure).

The batching layer feeds `InferenceStatistics`: `record_request` once per request when it is
answered, `record_execution` once per model run (one batch); `snapshot` copies the totals out
for the ModelStatistics answer. No gRPC or protobuf here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Duration:
    """How many times something happened and the nanoseconds it took in total."""

    count: int = 0
    ns: int = 0

    def plus(self, ns: int) -> Duration:
        return Duration(self.count + 1, self.ns + ns)


@dataclass(frozen=True)
class BatchCounts:
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()


@dataclass(frozen=True)
class VersionCounts:
    """One model version's totals. Request figures (success, fail, queue, compute_*) count
    requests; `execution_count` and `batches` count model runs, by batch size;
    `inference_count` counts images; `last_inference_ms` is the time of the last success."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    batches: dict[int, BatchCounts] = field(default_factory=dict)


class InferenceStatistics:
    """Totals per (model, version); safe to feed from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], VersionCounts] = {}

    def record_request(
        self,
        name: str,
        version: int,
        *,
        ok: bool,
        images: int,
        duration_ns: int,
        queue_ns: int = 0,
        compute_input_ns: int = 0,
        compute_infer_ns: int = 0,
        compute_output_ns: int = 0,
    ) -> None:
        """One request answered: OK with `images` inferences, or failed. `duration_ns` from
        arrival to answer; for a request that ran, the time it waited in the queue and the
        durations of the model run it was part of (preparing input, running, splitting output)."""
        with self._lock:
            counts = self._counts.get((name, version), VersionCounts())
            if ok:
                counts = replace(
                    counts,
                    last_inference_ms=time.time_ns() // 1_000_000,
                    inference_count=counts.inference_count + images,
                    success=counts.success.plus(duration_ns),
                    queue=counts.queue.plus(queue_ns),
                    compute_input=counts.compute_input.plus(compute_input_ns),
                    compute_infer=counts.compute_infer.plus(compute_infer_ns),
                    compute_output=counts.compute_output.plus(compute_output_ns),
                )
            else:
                counts = replace(counts, fail=counts.fail.plus(duration_ns))
            self._counts[(name, version)] = counts

    def record_execution(
        self,
        name: str,
        version: int,
        *,
        batch_size: int,
        compute_input_ns: int = 0,
        compute_infer_ns: int = 0,
        compute_output_ns: int = 0,
    ) -> None:
        """One model run of `batch_size` images and its durations."""
        with self._lock:
            counts = self._counts.get((name, version), VersionCounts())
            batch = counts.batches.get(batch_size, BatchCounts())
            batch = BatchCounts(
                batch.compute_input.plus(compute_input_ns),
                batch.compute_infer.plus(compute_infer_ns),
                batch.compute_output.plus(compute_output_ns),
            )
            self._counts[(name, version)] = replace(
                counts,
                execution_count=counts.execution_count + 1,
                batches={**counts.batches, batch_size: batch},
            )

    def snapshot(self, name: str, version: int) -> VersionCounts:
        """The totals of one version so far (zeros when it has seen nothing)."""
        with self._lock:
            return self._counts.get((name, version), VersionCounts())
