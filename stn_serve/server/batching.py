"""Dynamic batching: concurrent requests for one model version are merged into one ONNX Runtime run.

Each model version has a `Batcher`: a queue on the server's event loop, a task that gathers
batches from it, and `instances` threads, each running one batch at a time (ONNX Runtime
sessions take concurrent runs and release the GIL); a finished run hands its outputs back to the
loop in one call. The gathering task takes the oldest request, then lets later ones join until
the batch holds `max_batch_size` images or the oldest has waited `max_queue_delay_us`. Requests
arrive already validated and decoded, so one bad request cannot fail a batch; it knows nothing
of gRPC.

A batch waits only while another request for the model is being decoded (it will join within
moments); with none on the way it runs at once, so a lone request never pays the queue delay.
While a run is in progress, another instance starts only for a full batch: smaller ones wait to
go together in the next run, since every run costs two hand-offs between threads and a larger
batch costs less per image. A request whose caller was cancelled, or whose deadline passed while
it waited, is not run.
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
from dataclasses import dataclass, field

import numpy as np

from stn_serve.errors import DeadlineExceededError, NotReadyError
from stn_serve.runtime import Batching, OnnxModel


@dataclass
class Pending:
    images: np.ndarray  # float32[n, C, H, W]
    deadline: float | None  # time.monotonic() after which the request is not run
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


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
        self._changed = asyncio.Event()  # the gathering task may have something to do
        self._free = instances  # runs that may start now
        self._arriving = 0  # requests being decoded for this model, not yet queued
        self._filling = False  # the gathering task waits for requests being decoded
        self._loop = asyncio.get_running_loop()
        # Batches to run: (images, on_done); each instance's thread takes them in turn.
        self._runs: queue.SimpleQueue = queue.SimpleQueue()
        for index in range(instances):
            threading.Thread(
                target=self._runner,
                name=f"model-{model.name}-{model.version}-{index}",
                daemon=True,
            ).start()
        self._gathering = self._loop.create_task(self._gather())

    async def run(self, images: np.ndarray, deadline: float | None = None) -> dict[str, np.ndarray]:
        """This request's outputs ({name: [n, ...]}) from the next batch it fits in. Cancelling
        the caller takes the request out of the queue."""
        pending = Pending(images, deadline, self._loop.create_future())
        self._queue.append(pending)
        self._queued_images += len(images)
        self._depth.set(len(self._queue))
        if self._filling or self._may_start():
            self._changed.set()
        return await pending.future

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
            if self._filling:
                self._changed.set()

    async def _wait_for_change(self, timeout: float | None = None) -> None:
        self._changed.clear()
        if timeout is None:
            await self._changed.wait()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _join_queued(self, batch: list[Pending], size: int) -> int:
        """Move the oldest queued requests into `batch` (holding `size` images) while they fit;
        requests whose callers left are dropped. Returns the batch's new size."""
        while self._queue:
            head = self._queue[0]
            if not head.future.done():
                if batch and size + len(head.images) > self.max_batch_size:
                    break
                batch.append(head)
                size += len(head.images)
            self._queue.popleft()
            self._queued_images -= len(head.images)
        self._depth.set(len(self._queue))
        return size

    async def _gather(self) -> None:
        while True:
            while not self._may_start():
                await self._wait_for_change()
            batch: list[Pending] = []
            size = self._join_queued(batch, 0)
            if not batch:
                continue  # every queued caller had left
            flush_at = batch[0].enqueued + self.max_queue_delay_s
            self._filling = True
            while size < self.max_batch_size and not self._queue and self._arriving:
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                await self._wait_for_change(remaining)
                size = self._join_queued(batch, size)
            self._filling = False
            self._start(batch)

    def _start(self, batch: list[Pending]) -> None:
        """Hand the live requests of `batch` to an instance's thread as one run."""
        now = time.monotonic()
        live = []
        for pending in batch:
            if pending.future.done():
                continue  # the caller left while it waited
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
        """On the loop: hand each request its slice of the run's outputs (or its error)."""
        self._free += 1
        self._changed.set()
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
        offset = 0
        for pending in live:
            end = offset + len(pending.images)
            if not pending.future.done():
                pending.future.set_result(
                    {name: value[offset:end] for name, value in outputs.items()}
                )
            offset = end

    async def close(self) -> None:
        """Stop gathering, wait for the runs in progress and stop the threads. The server has
        stopped taking requests for the model by now (it stopped, or the version was drained);
        a request still queued, one that outlived the drain's timeout, is refused."""
        self._gathering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._gathering
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(
                    NotReadyError(f"model {self.model.name} version {self.model.version} unloaded")
                )
        self._queue.clear()
        while self._free < self.instances:
            await self._wait_for_change()
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
