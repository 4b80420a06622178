"""Dynamic batching, deadlines and cancellation in the queue, and when a batch starts on which
instance.

A `Gate` holds the model inside its first run, so requests pile up in the queue in a known
state; waits are bounded and nothing depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import DIGITS_SHAPE, running_server
from prometheus_client.parser import text_string_to_metric_families

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.contract import CONFIG_FILE
from stn_serve.errors import DeadlineExceededError
from stn_serve.runtime import ModelRepository, RuntimeOptions
from stn_serve.server.batching import Batcher
from stn_serve.server.metrics import Metrics
from stn_serve.server.statistics import InferenceStatistics

WAIT_S = 60
LATE_S = 2.0


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


async def wait_on_loop(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


class Gate:
    """Wraps `model.predict`: records each run's batch size and thread, and holds the runs
    until `open()`."""

    def __init__(self, model):
        self.calls: list[int] = []
        self.threads: list[threading.Thread] = []
        self.entered = threading.Event()
        self._open = threading.Event()
        predict = model.predict

        def gated(images):
            self.calls.append(len(images))
            self.threads.append(threading.current_thread())
            self.entered.set()
            if not self._open.wait(WAIT_S):
                raise AssertionError("gate never opened")
            return predict(images)

        model.predict = gated

    def open(self):
        self._open.set()


@pytest.fixture
def repository(model_repository, tmp_path):
    """The test models without their config.pbtxt, so that the server's flags set the batching
    (a model's config.pbtxt wins over them where it sets a value)."""
    copy = tmp_path / "export"
    shutil.copytree(model_repository, copy, ignore=shutil.ignore_patterns(CONFIG_FILE))
    return ModelRepository(copy, RuntimeOptions(device="cpu")).load()


def image_request(value: float) -> stn_pb2.PredictRequest:
    image = np.full(DIGITS_SHAPE, value, np.float32)
    tensor = stn_pb2.Tensor(
        shape=DIGITS_SHAPE, dtype=stn_pb2.DATA_TYPE_FLOAT32, data=image.tobytes()
    )
    return stn_pb2.PredictRequest(model="digits", images=[stn_pb2.Image(tensor=tensor)])


def queue_depth(server) -> float:
    return server.metrics.sample("stn_queue_depth", {"model": "digits", "version": "2"}) or 0


def request_count(server, code: str) -> float:
    labels = {"method": "Predict", "model": "digits", "code": code}
    return server.metrics.sample("stn_requests_total", labels) or 0


def fill_queue(server, stub, count: int):
    """One request inside the (held) model, then `count` more waiting in the queue; returns their futures."""
    first = stub.Predict.future(image_request(0.0), timeout=WAIT_S)
    wait_until(server.gate.entered.is_set, "the first request to reach the model")
    queued = []
    for i in range(count):
        queued.append(stub.Predict.future(image_request((i + 1) / 10), timeout=WAIT_S))
        wait_until(lambda n=i + 1: queue_depth(server) == n, f"{i + 1} requests in the queue")
    return first, queued


@pytest.fixture
def gated_server(repository, request):
    """A server whose newest digits model is held by a Gate; ServerOptions come from indirect parametrisation."""
    options = getattr(request, "param", {})
    with running_server(repository, metrics_port=0, **options) as (server, port):
        server.gate = Gate(repository.get("digits"))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield server, stn_pb2_grpc.StnServiceStub(channel)
        server.gate.open()


@pytest.mark.parametrize(
    "gated_server", [{"max_batch_size": 8, "max_queue_delay_us": 0}], indirect=True
)
def test_concurrent_requests_are_merged_into_one_run(gated_server, repository):
    server, stub = gated_server
    first, queued = fill_queue(server, stub, 3)
    server.gate.open()
    responses = [first.result(), *(f.result() for f in queued)]
    assert server.gate.calls == [1, 3]
    model = repository.get("digits")
    for i, response in enumerate(responses):  # each request got its own slice of the merged run
        expected = model.predict(np.full((1, *DIGITS_SHAPE), i / 10, np.float32))
        crop = np.frombuffer(response.predictions[0].crop.data, "<f4").reshape(DIGITS_SHAPE)
        np.testing.assert_allclose(crop, expected["crop"][0], atol=1e-6)
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=WAIT_S
    ).read()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    samples = {(s.name, s.labels.get("le")): s.value for s in families["stn_batch_size"].samples}
    assert samples[("stn_batch_size_count", None)] == 2
    assert samples[("stn_batch_size_bucket", "1.0")] == 1  # one run of 1, one of more than 1
    assert samples[("stn_batch_size_sum", None)] == 4


@pytest.mark.parametrize(
    "gated_server", [{"max_batch_size": 8, "max_queue_delay_us": 0}], indirect=True
)
def test_requests_in_flight_on_one_stream_share_a_batch(gated_server):
    server, stub = gated_server
    requests = [image_request(i / 10) for i in range(4)]
    for i, request in enumerate(requests):
        request.request_id = f"s{i}"

    def stream():
        yield requests[0]
        wait_until(server.gate.entered.is_set, "the first request to reach the model")
        yield from requests[1:]

    responses = stub.PredictStream(stream(), timeout=WAIT_S)
    wait_until(lambda: queue_depth(server) == 3, "the stream's other requests in the queue")
    server.gate.open()
    assert [r.request_id for r in responses] == ["s0", "s1", "s2", "s3"]
    assert server.gate.calls == [1, 3]


@pytest.mark.parametrize("gated_server", [{"max_batch_size": 1}], indirect=True)
def test_max_batch_size_one_turns_batching_off(gated_server):
    server, stub = gated_server
    first, queued = fill_queue(server, stub, 3)
    server.gate.open()
    for future in [first, *queued]:
        assert len(future.result().predictions) == 1
    assert server.gate.calls == [1, 1, 1, 1]


def test_request_past_its_deadline_in_the_queue_is_not_run(gated_server):
    server, stub = gated_server
    first = stub.Predict.future(image_request(0.0), timeout=WAIT_S)
    wait_until(server.gate.entered.is_set, "the first request to reach the model")
    # Long enough to reach the queue however busy this machine is; it then expires there.
    late = stub.Predict.future(image_request(0.5), timeout=LATE_S)
    wait_until(lambda: queue_depth(server) == 1, "the late request in the queue")
    assert late.exception(timeout=WAIT_S).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ended = {"DEADLINE_EXCEEDED", "CANCELLED"}
    wait_until(
        lambda: sum(request_count(server, code) for code in ended) == 1,
        "the server to end the call",
    )
    server.gate.open()
    assert first.result()
    assert stub.Predict(image_request(0.2), timeout=WAIT_S)
    assert server.gate.calls == [1, 1]  # the late request never ran


def test_stop_lets_the_request_in_the_model_finish(gated_server):
    server, stub = gated_server
    in_flight = stub.Predict.future(image_request(0.3), timeout=WAIT_S)
    wait_until(server.gate.entered.is_set, "the request to reach the model")
    stopper = threading.Thread(target=server.stop, kwargs={"grace": WAIT_S})
    stopper.start()
    wait_until(lambda: not server.serving, "the stop to begin")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(image_request(0.1), timeout=WAIT_S)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    server.gate.open()
    assert len(in_flight.result().predictions) == 1
    stopper.join(WAIT_S)
    assert not stopper.is_alive()


# --- the Batcher on its own, on an event loop of the test's -----------------------------------


class FakeModel:
    name, version = "fake", 1

    def __init__(self, open_gate: bool = False):
        self.gate = Gate(self)
        if open_gate:
            self.gate.open()

    def predict(self, images):
        return {"double": images * 2}


def batcher_for(model, **settings) -> Batcher:
    """A Batcher on the running loop (max batch 8, no queue delay unless set)."""
    options = {"max_batch_size": 8, "max_queue_delay_us": 0, **settings}
    return Batcher(model, Metrics(), InferenceStatistics(), **options)


def ones(count: int, value: float = 1.0) -> np.ndarray:
    return np.full((count, 2), value, np.float32)


def test_a_request_whose_deadline_passed_in_the_queue_is_not_run():
    async def scenario():
        model = FakeModel()
        batcher = batcher_for(model)
        first = asyncio.ensure_future(batcher.run(ones(1)))
        await wait_on_loop(model.gate.entered.is_set, "the first run")
        late = asyncio.ensure_future(batcher.run(ones(1), deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.1)  # the deadline passes while it waits
        model.gate.open()
        np.testing.assert_array_equal((await first)["double"], [[2, 2]])
        with pytest.raises(DeadlineExceededError, match="the request was not run"):
            await late
        assert model.gate.calls == [1]
        await batcher.close()

    asyncio.run(scenario())


def test_a_cancelled_request_leaves_the_queue_and_is_not_run():
    async def scenario():
        model = FakeModel()
        batcher = batcher_for(model)
        first = asyncio.ensure_future(batcher.run(ones(1)))
        await wait_on_loop(model.gate.entered.is_set, "the first run")
        gone = asyncio.ensure_future(batcher.run(ones(1, 5)))
        kept = asyncio.ensure_future(batcher.run(ones(1, 7)))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.open()
        await first
        np.testing.assert_array_equal((await kept)["double"], [[14, 14]])
        assert model.gate.calls == [1, 1]
        await batcher.close()

    asyncio.run(scenario())


def test_each_request_gets_its_slice_and_a_failure_stays_within_its_run():
    async def scenario():
        model = FakeModel()
        batcher = batcher_for(model)
        first = asyncio.ensure_future(batcher.run(ones(1, 0)))
        await wait_on_loop(model.gate.entered.is_set, "the first run")
        a = asyncio.ensure_future(batcher.run(ones(2, 1)))
        b = asyncio.ensure_future(batcher.run(ones(1, 3)))
        await asyncio.sleep(0)
        model.gate.open()
        await first
        np.testing.assert_array_equal((await a)["double"], np.full((2, 2), 2))
        np.testing.assert_array_equal((await b)["double"], [[6, 6]])
        assert model.gate.calls == [1, 3]

        def fail(images):
            raise ValueError("broken run")

        model.predict = fail
        with pytest.raises(ValueError, match="broken run"):
            await batcher.run(ones(1))
        model.predict = lambda images: {"double": images * 2}
        np.testing.assert_array_equal((await batcher.run(ones(1, 4)))["double"], [[8, 8]])
        await batcher.close()

    asyncio.run(scenario())


def test_a_lone_request_does_not_wait_for_the_queue_delay():
    """With nothing else on its way, a batch of one runs at once: a ten-minute queue delay would
    otherwise outlast the wait."""

    async def scenario():
        batcher = batcher_for(FakeModel(open_gate=True), max_queue_delay_us=600_000_000)
        result = await asyncio.wait_for(batcher.run(ones(1)), WAIT_S)
        np.testing.assert_array_equal(result["double"], [[2, 2]])
        await batcher.close()

    asyncio.run(scenario())


def test_a_batch_waits_for_a_request_being_decoded():
    async def scenario():
        model = FakeModel()
        batcher = batcher_for(model, max_queue_delay_us=600_000_000)
        first = asyncio.ensure_future(batcher.run(ones(1, 0)))
        await wait_on_loop(model.gate.entered.is_set, "the first run")
        with batcher.arriving():  # b is being decoded while a waits and the first run ends
            a = asyncio.ensure_future(batcher.run(ones(1, 1)))
            model.gate.open()
            await first
            await asyncio.sleep(0.05)
            assert not a.done()  # it waits for b instead of running alone
        b = asyncio.ensure_future(batcher.run(ones(1, 3)))
        np.testing.assert_array_equal((await a)["double"], [[2, 2]])
        np.testing.assert_array_equal((await b)["double"], [[6, 6]])
        assert model.gate.calls == [1, 2]
        await batcher.close()

    asyncio.run(scenario())


def test_a_second_instance_runs_only_a_full_batch_beside_the_first():
    async def scenario():
        model = FakeModel()
        batcher = batcher_for(model, instances=2, max_batch_size=4)
        first = asyncio.ensure_future(batcher.run(ones(1)))
        await wait_on_loop(lambda: len(model.gate.calls) == 1, "the first run")
        small = [asyncio.ensure_future(batcher.run(ones(1, v))) for v in (2, 3)]
        await asyncio.sleep(0.05)
        assert len(model.gate.calls) == 1  # two images wait for the run in progress
        full = asyncio.ensure_future(batcher.run(ones(2, 5)))
        await wait_on_loop(lambda: len(model.gate.calls) == 2, "a full batch beside the first")
        assert model.gate.calls == [1, 4]
        third = asyncio.ensure_future(batcher.run(ones(1, 7)))  # both instances busy: it waits
        await asyncio.sleep(0.05)
        assert len(model.gate.calls) == 2
        model.gate.open()
        for task, value in [(first, 1), (small[0], 2), (small[1], 3), (third, 7)]:
            np.testing.assert_array_equal((await task)["double"], [[2 * value] * 2])
        np.testing.assert_array_equal((await full)["double"], np.full((2, 2), 10))
        assert model.gate.calls == [1, 4, 1]
        await batcher.close()

    asyncio.run(scenario())


def test_close_waits_for_the_run_in_progress_and_stops_the_threads():
    async def scenario():
        model = FakeModel()
        batcher = batcher_for(model, instances=2)
        running = asyncio.ensure_future(batcher.run(ones(1)))
        await wait_on_loop(model.gate.entered.is_set, "the run")
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
        model.gate.open()
        await closing
        np.testing.assert_array_equal((await running)["double"], [[2, 2]])
        threads = [t for t in threading.enumerate() if t.name.startswith("model-fake-1-")]
        for thread in threads:
            thread.join(WAIT_S)
        assert not any(thread.is_alive() for thread in threads)

    asyncio.run(scenario())
