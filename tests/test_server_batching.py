"""Dynamic batching, the bounded queue, deadlines and graceful shutdown.

A `Gate` holds the model inside its first run, so requests pile up in the queue in a known state;
waits are bounded and nothing depends on how fast this machine is.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import DIGITS_SHAPE, running_server
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.errors import DeadlineExceededError, NotReadyError, ResourceExhaustedError
from stn_serve.runtime import ModelRepository, RuntimeOptions
from stn_serve.server.batching import Batcher, Dispatcher
from stn_serve.server.metrics import Metrics

WAIT_S = 60
LATE_S = 2.0


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Gate:
    """Wraps `model.predict`: records each run's batch size and holds the first run until `open()`."""

    def __init__(self, model):
        self.calls: list[int] = []
        self.entered = threading.Event()
        self._open = threading.Event()
        predict = model.predict

        def gated(images):
            self.calls.append(len(images))
            self.entered.set()
            if not self._open.wait(WAIT_S):
                raise AssertionError("gate never opened")
            return predict(images)

        model.predict = gated

    def open(self):
        self._open.set()


class FakeModel:
    name, version = "fake", 1

    def __init__(self):
        self.gate = Gate(self)

    def predict(self, images):
        return {"double": images * 2}


@pytest.fixture
def repository(model_repository):
    return ModelRepository(model_repository, RuntimeOptions(device="cpu")).load()


def image_request(value: float) -> stn_pb2.PredictRequest:
    image = np.full(DIGITS_SHAPE, value, np.float32)
    return stn_pb2.PredictRequest(
        model="digits",
        images=[
            stn_pb2.Image(
                tensor=stn_pb2.Tensor(
                    shape=DIGITS_SHAPE, dtype=stn_pb2.DATA_TYPE_FLOAT32, data=image.tobytes()
                )
            )
        ],
    )


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


@pytest.mark.parametrize("gated_server", [{"max_queue_size": 1}], indirect=True)
def test_full_queue_is_resource_exhausted(gated_server):
    server, stub = gated_server
    first, queued = fill_queue(server, stub, 1)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(image_request(0.5), timeout=WAIT_S)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue of model digits version 2 is full (1 requests waiting)" in error.value.details()
    server.gate.open()
    assert first.result() and queued[0].result()


def test_request_past_its_deadline_in_the_queue_is_not_run(gated_server):
    server, stub = gated_server
    first = stub.Predict.future(image_request(0.0), timeout=WAIT_S)
    wait_until(server.gate.entered.is_set, "the first request to reach the model")
    # Long enough to reach the queue however busy this machine is; it then expires there.
    late = stub.Predict.future(image_request(0.5), timeout=LATE_S)
    wait_until(lambda: queue_depth(server) == 1, "the late request in the queue")
    assert late.exception(timeout=WAIT_S).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The client gives up at its deadline and cancels; the server, whose clock for the same
    # deadline started later, sees either that cancellation or its own deadline first.
    ended = {"DEADLINE_EXCEEDED", "CANCELLED"}
    wait_until(
        lambda: sum(request_count(server, code) for code in ended) == 1,
        "the server to end the call",
    )
    server.gate.open()
    assert first.result()
    assert stub.Predict(image_request(0.2), timeout=WAIT_S)
    assert server.gate.calls == [1, 1]  # the late request never ran


def test_graceful_shutdown_finishes_the_in_flight_request(gated_server):
    server, stub = gated_server
    in_flight = stub.Predict.future(image_request(0.3), timeout=WAIT_S)
    wait_until(server.gate.entered.is_set, "the request to reach the model")
    stopper = threading.Thread(target=server.stop, kwargs={"grace": WAIT_S})
    stopper.start()
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    wait_until(
        lambda: (
            server.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
            == not_serving
        ),
        "health to turn NOT_SERVING",
    )
    assert (
        server.health.Check(health_pb2.HealthCheckRequest(service="digits"), None).status
        == not_serving
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(image_request(0.1), timeout=WAIT_S)
    # UNAVAILABLE from the server while it drains, or CANCELLED once gRPC itself has stopped
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    server.gate.open()
    assert len(in_flight.result().predictions) == 1
    stopper.join(WAIT_S)
    assert not stopper.is_alive()


# --- the Batcher on its own -------------------------------------------------------------------


def make_batcher(model, **settings) -> Batcher:
    options = {"max_batch_size": 8, "max_queue_delay_us": 0, "max_queue_size": 8, **settings}
    return Batcher(model, Metrics(), **options)


def test_batcher_refuses_a_request_whose_deadline_passed_in_the_queue():
    model = FakeModel()
    batcher = make_batcher(model)
    first = batcher.submit(np.ones((1, 2), np.float32))
    wait_until(model.gate.entered.is_set, "the first run")
    late = batcher.submit(np.ones((1, 2), np.float32), deadline=time.monotonic() + 0.05)
    time.sleep(0.1)  # let the deadline pass while the request waits
    model.gate.open()
    np.testing.assert_array_equal(first.result(WAIT_S)["double"], [[2, 2]])
    with pytest.raises(DeadlineExceededError, match="the request was not run"):
        late.result(WAIT_S)
    assert model.gate.calls == [1]
    batcher.close(WAIT_S)


class FakeContext:
    """The parts of grpc.ServicerContext the Dispatcher uses: a deadline `remaining_s` from now."""

    def __init__(self, remaining_s: float):
        self._deadline = time.monotonic() + remaining_s

    def time_remaining(self) -> float:
        return max(self._deadline - time.monotonic(), 0.0)

    def add_callback(self, callback) -> bool:
        return True


def test_dispatcher_answers_deadline_exceeded_for_a_queued_request_and_never_runs_it():
    model = FakeModel()
    dispatcher = Dispatcher(Metrics(), max_batch_size=8, max_queue_delay_us=0, max_queue_size=8)
    first = dispatcher.submit(model, np.ones((1, 2), np.float32), FakeContext(WAIT_S))
    wait_until(model.gate.entered.is_set, "the first run")
    context = FakeContext(0.05)
    with pytest.raises(DeadlineExceededError, match="deadline passed before model fake answered"):
        dispatcher.result(
            model, dispatcher.submit(model, np.ones((1, 2), np.float32), context), context
        )
    model.gate.open()
    first.result(WAIT_S)
    dispatcher.close(WAIT_S)
    assert model.gate.calls == [1]


def test_batcher_splits_outputs_and_shares_a_failure_only_within_its_run():
    model = FakeModel()
    batcher = make_batcher(model)
    first = batcher.submit(np.zeros((1, 2), np.float32))
    wait_until(model.gate.entered.is_set, "the first run")
    a = batcher.submit(np.full((2, 2), 1, np.float32))
    b = batcher.submit(np.full((1, 2), 3, np.float32))
    model.gate.open()
    first.result(WAIT_S)
    np.testing.assert_array_equal(a.result(WAIT_S)["double"], np.full((2, 2), 2))
    np.testing.assert_array_equal(b.result(WAIT_S)["double"], [[6, 6]])
    assert model.gate.calls == [1, 3]

    def fail(images):
        raise ValueError("broken run")

    model.predict = fail
    with pytest.raises(ValueError, match="broken run"):
        batcher.submit(np.zeros((1, 2), np.float32)).result(WAIT_S)
    batcher.close(WAIT_S)
    with pytest.raises(NotReadyError, match="shutting down"):
        batcher.submit(np.zeros((1, 2), np.float32))


def test_batcher_queue_bound():
    model = FakeModel()
    batcher = make_batcher(model, max_queue_size=1)
    batcher.submit(np.zeros((1, 2), np.float32))
    wait_until(model.gate.entered.is_set, "the first run")
    batcher.submit(np.zeros((1, 2), np.float32))
    with pytest.raises(ResourceExhaustedError, match="is full"):
        batcher.submit(np.zeros((1, 2), np.float32))
    model.gate.open()
    batcher.close(WAIT_S)


def test_a_lone_request_does_not_wait_for_the_queue_delay():
    """With nothing else on its way, a batch of one runs at once: a ten-minute queue delay would
    otherwise outlast the wait below."""
    model = FakeModel()
    model.gate.open()
    batcher = make_batcher(model, max_queue_delay_us=600_000_000)
    np.testing.assert_array_equal(
        batcher.submit(np.ones((1, 2), np.float32)).result(WAIT_S)["double"], [[2, 2]]
    )
    batcher.close(WAIT_S)


def test_a_batch_waits_for_a_request_being_decoded():
    model = FakeModel()
    batcher = make_batcher(model, max_queue_delay_us=600_000_000)
    first = batcher.submit(np.zeros((1, 2), np.float32))
    wait_until(model.gate.entered.is_set, "the first run")
    with batcher.arrival() as submit_b:  # b is being decoded while a is queued and the gate opens
        a = batcher.submit(np.ones((1, 2), np.float32))
        model.gate.open()
        first.result(WAIT_S)
        b = submit_b(np.full((1, 2), 3, np.float32))
    np.testing.assert_array_equal(a.result(WAIT_S)["double"], [[2, 2]])
    np.testing.assert_array_equal(b.result(WAIT_S)["double"], [[6, 6]])
    assert model.gate.calls == [1, 2]
    batcher.close(WAIT_S)


def test_inline_submit_runs_in_the_callers_thread_only_when_the_model_is_idle():
    model = FakeModel()
    threads = []
    gated = model.predict

    def predict(images):
        threads.append(threading.current_thread())
        return gated(images)

    model.predict = predict
    batcher = make_batcher(model)
    held = batcher.submit(np.zeros((1, 2), np.float32))  # runs on the batcher's thread
    wait_until(model.gate.entered.is_set, "the first run")
    queued = batcher.submit(np.ones((1, 2), np.float32), inline=True)  # model busy: queued
    assert not queued.done()
    model.gate.open()
    held.result(WAIT_S)
    np.testing.assert_array_equal(queued.result(WAIT_S)["double"], [[2, 2]])
    assert threads == [batcher._threads[0], batcher._threads[0]]

    def runs_here() -> bool:  # once the batcher has released the model, the next run is inline
        alone = batcher.submit(np.full((1, 2), 4, np.float32), inline=True)
        np.testing.assert_array_equal(alone.result(WAIT_S)["double"], [[8, 8]])
        return threads[-1] is threading.current_thread()

    wait_until(runs_here, "a run in the calling thread")
    batcher.close(WAIT_S)


def test_instances_run_that_many_batches_at_once():
    model = FakeModel()
    batcher = make_batcher(model, instances=2)
    first = batcher.submit(np.ones((1, 2), np.float32))
    wait_until(lambda: len(model.gate.calls) == 1, "the first run")
    second = batcher.submit(np.full((2, 2), 3, np.float32))
    wait_until(lambda: len(model.gate.calls) == 2, "a second run beside the held first")
    third = batcher.submit(np.full((1, 2), 5, np.float32))  # both instances busy: it waits
    assert len(batcher._queue) == 1 and len(model.gate.calls) == 2
    model.gate.open()
    np.testing.assert_array_equal(first.result(WAIT_S)["double"], [[2, 2]])
    np.testing.assert_array_equal(second.result(WAIT_S)["double"], np.full((2, 2), 6))
    np.testing.assert_array_equal(third.result(WAIT_S)["double"], [[10, 10]])
    assert model.gate.calls == [1, 2, 1]
    batcher.close(WAIT_S)
    assert not any(thread.is_alive() for thread in batcher._threads)

