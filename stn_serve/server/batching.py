"""Dynamic batching: concurrent requests for one model version are merged into one ONNX Runtime run.

Each model version has a `Batcher` with a bounded queue and `instances` threads, each able to run
one batch at a time (ONNX Runtime sessions take concurrent runs). One thread at a time gathers:
it takes the oldest request, then lets later ones join until the batch holds `max_batch_size`
images or the oldest has waited `max_queue_delay_us`, runs the model once and hands each request
its slice of the outputs. Requests arrive already validated and decoded, so one bad request
cannot fail a batch.

A batch waits only while another request for the model is being decoded (it will join within
moments); with none on the way it runs at once, so a lone request never pays the queue delay.
A request that finds the model idle, nothing queued and nothing on the way may run in the
caller's own thread (`inline=True`), sparing two thread hand-offs; at most `instances` runs at a
time per model either way.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from stn_serve.errors import (
    DeadlineExceededError,
    NotReadyError,
    RequestCancelledError,
    ResourceExhaustedError,
)
from stn_serve.runtime import OnnxModel

log = logging.getLogger(__name__)


@dataclass
class Pending:
    images: np.ndarray  # float32[n, C, H, W]
    deadline: float | None  # time.monotonic() after which the request is not run
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(
        self,
        model: OnnxModel,
        metrics,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        instances: int = 1,
    ):
        self.model = model
        self.instances = instances
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        labels = {"model": model.name, "version": str(model.version)}
        self._queue_time = metrics.queue_time.labels(**labels)
        self._inference_time = metrics.inference_time.labels(**labels)
        self._batch_size = metrics.batch_size.labels(**labels)
        self._depth = metrics.queue_depth.labels(**labels)
        self._queue: collections.deque[Pending] = collections.deque()
        # One lock, two conditions: idle threads wait for work on `_condition`; the gathering
        # thread waits for its batch to fill on `_filling`, so a wake-up meant for it never
        # lands on an idle thread.
        lock = threading.RLock()
        self._condition = threading.Condition(lock)
        self._filling = threading.Condition(lock)
        self._closed = False
        self._arriving = 0  # requests being decoded for this model, not yet submitted
        self._gathering = False  # a thread is gathering the next batch
        self._running = 0  # batches being run (by batcher threads or inline)
        self._room = 0  # while a batch waits to fill: images it still takes
        self._threads = [
            threading.Thread(
                target=self._loop,
                name=f"batcher-{model.name}-{model.version}-{index}",
                daemon=True,
            )
            for index in range(instances)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, images: np.ndarray, deadline: float | None = None, inline: bool = False
    ) -> Future:
        """Queue `images` for the next batch; the future resolves to this request's outputs.
        With `inline`, an idle model runs them in this thread before returning."""
        return self._enqueue(images, deadline, arrived=False, inline=inline)

    @contextlib.contextmanager
    def arrival(self):
        """Wrap the validating and decoding of one request; queue it with the yielded
        `submit(images, deadline)`. A batch being gathered meanwhile waits for it."""
        submitted = False

        def submit(
            images: np.ndarray, deadline: float | None = None, inline: bool = False
        ) -> Future:
            nonlocal submitted
            submitted = True
            return self._enqueue(images, deadline, arrived=True, inline=inline)

        with self._condition:
            self._arriving += 1
        try:
            yield submit
        finally:
            if not submitted:  # refused while decoding: nothing will join from it
                with self._condition:
                    self._arriving -= 1
                    self._wake_batcher()

    def _enqueue(
        self, images: np.ndarray, deadline: float | None, arrived: bool, inline: bool
    ) -> Future:
        pending = Pending(images, deadline)
        with self._condition:
            if arrived:
                self._arriving -= 1
            if self._closed:
                raise NotReadyError(f"model {self.model.name} is shutting down")
            if len(self._queue) >= self.max_queue_size:
                raise ResourceExhaustedError(
                    f"queue of model {self.model.name} version {self.model.version} is full "
                    f"({self.max_queue_size} requests waiting); retry later"
                )
            inline = (
                inline
                and self._running < self.instances
                and not (self._gathering or self._queue or self._arriving)
            )
            if inline:
                self._running += 1
            else:
                self._queue.append(pending)
                self._depth.set(len(self._queue))
            self._wake_batcher()
        if inline:
            self._run_and_release([pending])
        return pending.future

    def _wake_batcher(self) -> None:
        """Wake a batcher thread (the caller holds the lock) only when it has something to do:
        start gathering queued requests for a free instance, or stop waiting for a batch to fill
        once no request is being decoded or enough are queued. Every other wake-up would cost a
        pair of context switches per request for nothing (the end of each run wakes one anyway)."""
        if self._gathering:
            if self._room and (not self._arriving or len(self._queue) >= self._room):
                self._filling.notify()
        elif self._running < self.instances:
            self._condition.notify()

    def _join_queued(self, batch: list[Pending], size: int) -> int:
        """Move the oldest queued requests into `batch` (holding `size` images) while they fit;
        returns its new size. The caller holds the condition."""
        while self._queue and size + len(self._queue[0].images) <= self.max_batch_size:
            batch.append(self._queue.popleft())
            size += len(batch[-1].images)
        self._depth.set(len(self._queue))
        return size

    def _next_batch(self) -> list[Pending] | None:
        """Block for the oldest request, then gather the ones that may join it; None once closed and drained."""
        with self._condition:
            while self._gathering or self._running >= self.instances or not self._queue:
                if self._closed and not self._queue:
                    return None
                self._condition.wait()
            self._gathering = True
            batch = [self._queue.popleft()]
            size = len(batch[0].images)
            flush_at = batch[0].enqueued + self.max_queue_delay_s
            while (size := self._join_queued(batch, size)) < self.max_batch_size:
                if self._queue:
                    break  # the next request does not fit: it starts the next batch
                remaining = flush_at - time.monotonic()
                if remaining <= 0 or self._closed or not self._arriving:
                    break
                self._room = self.max_batch_size - size
                self._filling.wait(remaining)
                self._room = 0
            self._gathering = False
            self._running += 1
            if self._queue and self._running < self.instances:
                self._condition.notify()  # the rest can start gathering on a free instance
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run_and_release(batch)

    def _run_and_release(self, batch: list[Pending]) -> None:
        try:
            self._run(batch)
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify()

    def _run(self, batch: list[Pending]) -> None:
        now = time.monotonic()
        live = []
        for pending in batch:
            if not pending.future.set_running_or_notify_cancel():
                continue  # the client went away while it waited
            # A request that arrived with no time left (time_remaining 0) has a deadline of exactly
            # its arrival; it must fail, not race the client's own deadline with an answer.
            if pending.deadline is not None and now >= pending.deadline:
                pending.future.set_exception(
                    DeadlineExceededError(
                        f"deadline passed after {now - pending.enqueued:.3f} s in the queue of model "
                        f"{self.model.name}; the request was not run"
                    )
                )
                continue
            self._queue_time.observe(now - pending.enqueued)
            live.append(pending)
        if not live:
            return
        images = live[0].images if len(live) == 1 else np.concatenate([p.images for p in live])
        start = time.perf_counter()
        try:
            outputs = self.model.predict(images)
        except Exception as error:  # noqa: BLE001 - handed to every waiting request
            for pending in live:
                pending.future.set_exception(error)
            return
        self._inference_time.observe(time.perf_counter() - start)
        self._batch_size.observe(len(images))
        offset = 0
        for pending in live:
            end = offset + len(pending.images)
            pending.future.set_result({name: value[offset:end] for name, value in outputs.items()})
            offset = end

    def drain(self) -> None:
        """Refuse new requests; the queued ones still run."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            self._filling.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, run the queued ones, and stop the threads."""
        self.drain()
        for thread in self._threads:
            thread.join(timeout)


def time_remaining(context) -> float | None:
    """Seconds left before the RPC's deadline; None when it has none."""
    remaining = context.time_remaining()
    if remaining is not None and remaining >= threading.TIMEOUT_MAX:
        return None  # grpc reports a call without a deadline as one far in the future
    return remaining


class Dispatcher:
    """One `Batcher` per model version, created on first use."""

    def __init__(
        self,
        metrics,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        instances: int = 1,
    ):
        self._metrics = metrics
        self._settings = (max_batch_size, max_queue_delay_us, max_queue_size, instances)
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._lock = threading.Lock()
        self._accepting = True

    def batcher(self, model: OnnxModel) -> Batcher:
        key = (model.name, model.version)
        with self._lock:
            if not self._accepting:
                raise NotReadyError(
                    "the server is shutting down; send the request to another replica"
                )
            if key not in self._batchers:
                self._batchers[key] = Batcher(model, self._metrics, *self._settings)
            return self._batchers[key]

    @contextlib.contextmanager
    def arrival(self, model: OnnxModel, context, inline: bool = False):
        """Wrap the validating and decoding of one request for `model` (`context` is its
        grpc.ServicerContext); queue it with the yielded `submit(images) -> Future`. With
        `inline`, an idle model runs it in the calling thread (see `Batcher.submit`)."""
        with self.batcher(model).arrival() as submit:
            yield lambda images: self._submit(
                functools.partial(submit, inline=inline), images, context
            )

    def submit(self, model: OnnxModel, images: np.ndarray, context) -> Future:
        """Queue `images` for `model` under the RPC's deadline."""
        return self._submit(self.batcher(model).submit, images, context)

    @staticmethod
    def _submit(submit, images: np.ndarray, context) -> Future:
        remaining = time_remaining(context)
        deadline = None if remaining is None else time.monotonic() + remaining
        future = submit(images, deadline)
        context.add_callback(future.cancel)  # a client that cancels leaves the queue
        return future

    def result(self, model: OnnxModel, future: Future, context) -> dict[str, np.ndarray]:
        """Wait for a submitted request's outputs, at most until the RPC's deadline."""
        try:
            return future.result(timeout=time_remaining(context))
        except FutureTimeout as error:
            future.cancel()
            raise DeadlineExceededError(
                f"deadline passed before model {model.name} answered"
            ) from error
        except CancelledError as error:
            # The end of the RPC cancels the future through its callback: its deadline passed, or
            # the client cancelled it.
            if time_remaining(context) == 0:
                raise DeadlineExceededError(
                    f"deadline passed before model {model.name} answered"
                ) from error
            raise RequestCancelledError("the client cancelled the request") from error

    def drain(self) -> None:
        """Refuse new requests from now on; queued ones still run."""
        with self._lock:
            self._accepting = False
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.drain()

    def close(self, timeout: float | None = None) -> None:
        self.drain()
        with self._lock:
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.close(timeout)
