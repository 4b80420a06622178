"""Dynamic batching: concurrent requests for one model version are merged into one ONNX Runtime run.

Each model version has a `Batcher`: a queue on the server's event loop, a dispatching callback
the loop calls when something may start, and `instances` threads, each running one batch at a
time (ONNX Runtime sessions take concurrent runs and release the GIL); a finished run hands its
outputs back to the loop in one call. A batch takes the oldest requests, up to `max_batch_size`
images. Requests arrive already validated and decoded, so one bad request cannot fail a batch;
it knows nothing of gRPC.

A batch that is not full waits a couple of turns of the event loop (`JOIN_TURNS`): requests the
loop has already received join it, which costs microseconds rather than a timer's wait. Beyond
that it waits only while another request for the model is being decoded (it will join within
moments), up to `max_queue_delay_us` after its oldest request arrived; with none on the way it
runs at once, so a lone request never pays the queue delay. While a run is in progress, another
instance starts only for a full batch: smaller ones wait to go together in the next run, since
every run costs two hand-offs between threads and a larger batch costs less per image. A request
whose caller was cancelled, or whose deadline passed while it waited, is not run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from stn_serve.errors import DeadlineExceededError, NotReadyError
from stn_serve.runtime import Batching, OnnxModel


class Pending:
    """One queued request: its images (float32[n, C, H, W]), its deadline (`time.monotonic()`
    after which it is not run; None for none) and the future its outputs go to."""

    __slots__ = ("count", "deadline", "enqueued", "future", "images")

    def __init__(self, images: np.ndarray, deadline: float | None, future: asyncio.Future):
        self.images = images
        self.count = len(images)
        self.deadline = deadline
        self.future = future
        self.enqueued = time.monotonic()


#: Loop turns a batch that is not full waits for before it starts: requests the event loop is
#: bringing in (already received, their handlers scheduled) join it instead of the next run.
#: Each turn costs microseconds; a lone request pays them, never the queue delay.
JOIN_TURNS = 2


class Batcher:
    """Created on the server's event loop; every method is called there."""

    def __init__(
        self,
        model: OnnxModel,
        metrics,
        statistics,
        max_batch_size: int,
        max_queue_delay_us: int,
        instances: int = 1,
    ):
        self.model = model
        self._statistics = statistics  # the Open Inference Protocol's, per version
        self.instances = instances
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        labels = {"model": model.name, "version": str(model.version)}
        self._queue_time = metrics.queue_time.labels(**labels)
        self._inference_time = metrics.inference_time.labels(**labels)
        self._batch_size = metrics.batch_size.labels(**labels)
        self._depth = metrics.queue_depth.labels(**labels)
        self._queue: collections.deque[Pending] = collections.deque()
        self._queued_images = 0
        self._free = instances  # runs that may start now
        self._arriving = 0  # requests being decoded for this model, not yet queued
        self._scheduled = False  # a call of `_dispatch` waits on the loop
        self._turns = 0  # loop turns the batch now gathered has waited (see JOIN_TURNS)
        self._timer: asyncio.TimerHandle | None = None  # flushes a batch waiting for decoding
        self._closing = False
        self._idle = asyncio.Event()  # set when a run ends (close waits for every run)
        self._loop = asyncio.get_running_loop()
        # Batches to run: (images, on_done); each instance's thread takes them in turn.
        self._runs: queue.SimpleQueue = queue.SimpleQueue()
        for index in range(instances):
            threading.Thread(
                target=self._runner,
                name=f"model-{model.name}-{model.version}-{index}",
                daemon=True,
            ).start()

    async def run(self, images: np.ndarray, deadline: float | None = None) -> dict[str, np.ndarray]:
        """This request's outputs ({name: [n, ...]}) from the next batch it fits in. Cancelling
        the caller takes the request out of the queue."""
        pending = Pending(images, deadline, self._loop.create_future())
        self._queue.append(pending)
        self._queued_images += pending.count
        self._turns = 0  # the loop still brings requests: a batch gathered waits on
        self._depth.set(len(self._queue))
        if not self._scheduled and self._free:
            self._schedule()
        return await pending.future

    def _schedule(self) -> None:
        """Have `_dispatch` called on the loop's next turn (once, however often asked)."""
        if not self._scheduled and not self._closing:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)

    def _may_start(self) -> bool:
        """Whether a run may start now: an instance is free and requests are queued, and either
        no run is in progress or a full batch waits."""
        if not self._free or not self._queue:
            return False
        return self._free == self.instances or self._queued_images >= self.max_batch_size

    @contextlib.contextmanager
    def arriving(self):
        """Wrap the decoding of a request for this model that waits on the decode pool: a batch
        being gathered meanwhile may wait for it (up to the queue delay) instead of leaving
        without it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._turns = 0
            self._schedule()

    def _dispatch(self) -> None:
        """Start the runs that may start now. A batch that is not full waits while the loop
        brings requests (until JOIN_TURNS turns pass with none), then, while requests for the
        model are being decoded; both up to the queue delay after its oldest request arrived."""
        self._scheduled = False
        while self._may_start():
            if self._queued_images < self.max_batch_size:
                flush_at = self._queue[0].enqueued + self.max_queue_delay_s
                waiting = time.monotonic() < flush_at
                if waiting and self._turns < JOIN_TURNS:
                    self._turns += 1
                    self._schedule()
                    return
                if waiting and self._arriving:
                    if self._timer is None:
                        self._timer = self._loop.call_later(
                            flush_at - time.monotonic(), self._flush
                        )
                    return
            self._turns = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch = self._take()
            if batch:
                self._start(batch)

    def _flush(self) -> None:
        """The queue delay of the oldest request passed: its batch goes as it is."""
        self._timer = None
        self._schedule()

    def _take(self) -> list[Pending]:
        """The oldest queued requests that fit in one batch, out of the queue; requests whose
        callers left are dropped."""
        batch: list[Pending] = []
        size = 0
        waiting = self._queue
        while waiting:
            head = waiting[0]
            if not head.future.done():
                if batch and size + head.count > self.max_batch_size:
                    break
                batch.append(head)
                size += head.count
            waiting.popleft()
            self._queued_images -= head.count
        self._depth.set(len(waiting))
        return batch

    def _start(self, batch: list[Pending]) -> None:
        """Hand the live requests of `batch` to an instance's thread as one run."""
        now = time.monotonic()
        live = []
        for pending in batch:
            # A request that arrived with no time left has a deadline of exactly its arrival; it
            # must fail, not race the client's own deadline with an answer.
            if pending.deadline is not None and now >= pending.deadline:
                pending.future.set_exception(
                    DeadlineExceededError(
                        f"deadline passed after {now - pending.enqueued:.3f} s in the queue of "
                        f"model {self.model.name}; the request was not run"
                    )
                )
                continue
            self._queue_time.observe(now - pending.enqueued)
            live.append(pending)
        if not live:
            return
        images = live[0].images if len(live) == 1 else np.concatenate([p.images for p in live])
        self._free -= 1
        self._runs.put((images, functools.partial(self._finished, live, now)))

    def _runner(self) -> None:
        """An instance's thread: run batches until told to stop (None); each run's time and
        outputs (or error) go back to the loop in one call."""
        while (job := self._runs.get()) is not None:
            images, on_done = job
            start = time.perf_counter()
            try:
                outputs, error = self.model.predict(images), None
            except Exception as failure:  # noqa: BLE001 - handed to every request of the run
                outputs, error = None, failure
            seconds = time.perf_counter() - start
            self._loop.call_soon_threadsafe(on_done, len(images), seconds, outputs, error)

    def _finished(
        self, live: list[Pending], started: float, images: int, seconds: float, outputs, error
    ) -> None:
        """On the loop: hand each request its slice of the run's outputs (or its error), and
        start what waited for the instance."""
        self._free += 1
        self._idle.set()
        if self._queue:
            self._schedule()
        if error is not None:
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self._inference_time.observe(seconds)
        self._batch_size.observe(images)
        self._statistics.record_execution(
            self.model.name,
            self.model.version,
            batch_size=images,
            compute_infer_ns=int(seconds * 1e9),
            queue_ns=[int((started - pending.enqueued) * 1e9) for pending in live],
        )
        if len(live) == 1:
            if not live[0].future.done():
                live[0].future.set_result(outputs)
            return
        offset = 0
        for pending in live:
            end = offset + pending.count
            if not pending.future.done():
                pending.future.set_result(
                    {name: value[offset:end] for name, value in outputs.items()}
                )
            offset = end

    async def close(self) -> None:
        """Stop gathering, wait for the runs in progress and stop the threads. The server has
        stopped taking requests for the model by now (it stopped, or the version was drained);
        a request still queued, one that outlived the drain's timeout, is refused."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(
                    NotReadyError(f"model {self.model.name} version {self.model.version} unloaded")
                )
        self._queue.clear()
        self._queued_images = 0
        self._depth.set(0)
        while self._free < self.instances:
            self._idle.clear()
            await self._idle.wait()
        for _ in range(self.instances):
            self._runs.put(None)


class Dispatcher:
    """One `Batcher` per loaded model version, created on first use on the server's event loop,
    each batching as `batching_of(model)` says (the model's config.pbtxt over the server's
    flags). Keyed by the model object, so a version that is reloaded (new files, new batching
    settings) gets a batcher of its own."""

    def __init__(self, metrics, statistics, batching_of: Callable[[OnnxModel], Batching]):
        self._metrics = metrics
        self._statistics = statistics
        self._batching_of = batching_of
        self._batchers: dict[OnnxModel, Batcher] = {}

    def batcher(self, model: OnnxModel) -> Batcher:
        batcher = self._batchers.get(model)
        if batcher is None:
            if not model.ready:  # unloaded under a request that outlived the drain
                raise NotReadyError(f"model {model.name} version {model.version} unloaded")
            batching = self._batching_of(model)
            batcher = Batcher(
                model,
                self._metrics,
                self._statistics,
                batching.max_batch_size,
                batching.max_queue_delay_us,
                batching.instances,
            )
            self._batchers[model] = batcher
        return batcher

    async def retire(self, models: list[OnnxModel]) -> None:
        """Close the batchers of `models` (unloaded ones, no longer in the repository)."""
        closing = [self._batchers.pop(model) for model in models if model in self._batchers]
        for batcher in closing:
            await batcher.close()

    def models(self) -> list[OnnxModel]:
        return list(self._batchers)

    async def close(self) -> None:
        await self.retire(self.models())
