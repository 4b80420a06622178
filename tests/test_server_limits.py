"""What idle, greedy, bursty or careless clients cannot do to everyone else: idle and unread
streams do not block unary calls or health checks, a burst beyond the admission bound is shed
with RESOURCE_EXHAUSTED and the server recovers, idle streams are closed, and client-supplied
strings are cut in messages and logs. Every wait is bounded; servers bind 127.0.0.1 port 0."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import DIGITS_SHAPE, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stn_serve._proto.inference import grpc_service_pb2 as oip
from stn_serve._proto.inference import grpc_service_pb2_grpc as oip_grpc
from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.runtime import ModelRepository, RuntimeOptions

WAIT_S = 60
ANSWER_WITHIN_S = 2.0
SERVING = health_pb2.HealthCheckResponse.SERVING


def request(value: float = 0.5, model: str = "digits") -> stn_pb2.PredictRequest:
    image = np.full(DIGITS_SHAPE, value, np.float32)
    tensor = stn_pb2.Tensor(
        shape=DIGITS_SHAPE, dtype=stn_pb2.DATA_TYPE_FLOAT32, data=image.tobytes()
    )
    return stn_pb2.PredictRequest(model=model, images=[stn_pb2.Image(tensor=tensor)])


def infer_request(value: float = 0.5) -> oip.ModelInferRequest:
    image = np.full((1, *DIGITS_SHAPE), value, np.float32)
    return oip.ModelInferRequest(
        model_name="digits",
        inputs=[
            oip.ModelInferRequest.InferInputTensor(name="image", datatype="FP32", shape=image.shape)
        ],
        raw_input_contents=[image.tobytes()],
    )


def own_channel(port: int) -> grpc.Channel:
    """A channel with a connection of its own."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def answers_quickly(port: int) -> None:
    """A unary Predict and a health Check, on a new connection, both answer within 2 s."""
    with own_channel(port) as channel:
        started = time.monotonic()
        response = stn_pb2_grpc.StnServiceStub(channel).Predict(request(), timeout=ANSWER_WITHIN_S)
        assert len(response.predictions) == 1
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=ANSWER_WITHIN_S
        )
        assert health.status == SERVING
        assert time.monotonic() - started < 2 * ANSWER_WITHIN_S


@pytest.fixture(scope="module")
def repository(model_repository):
    return ModelRepository(model_repository, RuntimeOptions(device="cpu")).load()


def test_idle_and_unread_streams_do_not_block_unary_calls_or_health(repository):
    """64 streams that never send (half PredictStream, half ModelStreamInfer, over 4
    connections) and one stream whose client sends without ever reading: a Predict and a health
    Check still answer within 2 s."""
    release = threading.Event()

    def never_sends():
        release.wait(WAIT_S)
        return
        yield

    def sends_forever():
        while not release.is_set():
            yield request()

    with running_server(repository) as (_, port):
        channels = [own_channel(port) for _ in range(4)]
        streams = []
        try:
            for index in range(64):
                channel = channels[index % 4]
                if index % 2:
                    stub = oip_grpc.GRPCInferenceServiceStub(channel)
                    streams.append(stub.ModelStreamInfer(never_sends(), timeout=WAIT_S))
                else:
                    stub = stn_pb2_grpc.StnServiceStub(channel)
                    streams.append(stub.PredictStream(never_sends(), timeout=WAIT_S))
            greedy = stn_pb2_grpc.StnServiceStub(channels[0]).PredictStream(
                sends_forever(), timeout=WAIT_S
            )
            # Every stream has reached the server once each connection answers a call of its own.
            for channel in channels:
                stn_pb2_grpc.StnServiceStub(channel).Predict(request(), timeout=WAIT_S)
            answers_quickly(port)
        finally:
            release.set()
            for stream in [*streams, greedy]:
                stream.cancel()
            for channel in channels:
                channel.close()


class Gate:
    """Holds the model inside its runs until `open()`; counts the runs."""

    def __init__(self, model):
        self.runs = 0
        self.entered = threading.Event()
        self._open = threading.Event()
        predict = model.predict

        def gated(images):
            self.runs += 1
            self.entered.set()
            assert self._open.wait(WAIT_S), "gate never opened"
            return predict(images)

        model.predict = gated

    def open(self) -> None:
        self._open.set()


def test_a_burst_beyond_the_admission_bound_is_shed_at_once_and_the_server_recovers(
    model_repository,
):
    repository = ModelRepository(model_repository, RuntimeOptions(device="cpu")).load()
    gate = Gate(repository.get("digits"))
    with (
        running_server(repository, max_in_flight=8, max_in_flight_per_model=4) as (_, port),
        own_channel(port) as channel,
        ThreadPoolExecutor(40) as pool,
    ):
        stub = stn_pb2_grpc.StnServiceStub(channel)

        def call(value):
            started = time.monotonic()
            try:
                stub.Predict(request(value), timeout=WAIT_S)
                return grpc.StatusCode.OK, "", time.monotonic() - started
            except grpc.RpcError as error:
                return error.code(), error.details(), time.monotonic() - started

        burst = [pool.submit(call, 0.01 * i) for i in range(40)]
        assert gate.entered.wait(WAIT_S)
        # The first 4 fill the model's places (one held in its run, three queued); the other
        # 36 are refused without waiting for them.
        deadline = time.monotonic() + WAIT_S
        while sum(f.done() for f in burst) < 36 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = [f.result() for f in burst if f.done()]
        assert len(refused) == 36
        assert {code for code, _, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("--max-in-flight-per-model" in details for _, details, _ in refused)
        assert max(seconds for _, _, seconds in refused) < ANSWER_WITHIN_S
        gate.open()
        codes = [f.result(WAIT_S)[0] for f in burst]
        assert codes.count(grpc.StatusCode.OK) == 4
        assert len(stub.Predict(request(), timeout=WAIT_S).predictions) == 1


def test_a_stream_idle_for_too_long_is_closed(repository):
    requests: queue.Queue = queue.Queue()
    with (
        running_server(repository, stream_idle_timeout_s=0.5) as (_, port),
        own_channel(port) as channel,
    ):
        stream = stn_pb2_grpc.StnServiceStub(channel).PredictStream(
            iter(requests.get, None), timeout=WAIT_S
        )
        requests.put(request())
        assert len(next(stream).predictions) == 1
        with pytest.raises(grpc.RpcError) as closed:
            next(stream)  # nothing more is sent
        requests.put(None)
    assert closed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--stream-idle-timeout-s" in closed.value.details()


LONG = "m" * 100_000


def test_client_strings_are_cut_in_messages_and_logs(repository, caplog):
    caplog.set_level(logging.INFO, logger="stn_serve")
    with running_server(repository) as (_, port), own_channel(port) as channel:
        stub = stn_pb2_grpc.StnServiceStub(channel)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Predict(request(model=LONG), timeout=WAIT_S)
        inference = oip_grpc.GRPCInferenceServiceStub(channel)
        bad_outputs = infer_request()
        bad_outputs.outputs.add(name=LONG)
        with pytest.raises(grpc.RpcError) as outputs:
            inference.ModelInfer(bad_outputs, timeout=WAIT_S)
        with pytest.raises(grpc.RpcError) as version:
            inference.ModelMetadata(
                oip.ModelMetadataRequest(name="digits", version=LONG), timeout=WAIT_S
            )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "(100000 characters)" in unknown.value.details()
    assert outputs.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert version.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for error in (unknown, outputs, version):
        assert len(error.value.details()) < 500, error.value.details()[:200]
    refusals = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert len(refusals) == 3
    assert all(len(r.reason) < 500 for r in refusals)


@pytest.mark.parametrize("version", ["²", "-1", "1.0", " 1", "0x1"])
def test_open_inference_protocol_versions_are_ascii_digits(repository, version):
    with running_server(repository) as (_, port), own_channel(port) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelMetadata(
                oip.ModelMetadataRequest(name="digits", version=version), timeout=WAIT_S
            )
        infer = infer_request()
        infer.model_version = version
        with pytest.raises(grpc.RpcError) as infer_error:
            stub.ModelInfer(infer, timeout=WAIT_S)
    for refused in (error, infer_error):
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "model version must be a positive integer" in refused.value.details()


# --- a repository that changes while the server runs --------------------------------------------


def health_of(channel, service: str) -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
        .status
    )


def test_health_and_batchers_follow_the_repository_as_it_changes(model_repository, tmp_path):
    """Models come and go through the repository (its owner's rescan): health follows,
    requests reach the new model, the gone one's batcher is closed."""
    import shutil

    from conftest import write_model

    shutil.copytree(model_repository / "digits", tmp_path / "digits")
    repository = ModelRepository(tmp_path, RuntimeOptions(device="cpu")).load()
    with (
        running_server(repository) as (server, port),
        own_channel(port) as channel,
    ):
        stub = stn_pb2_grpc.StnServiceStub(channel)
        write_model(tmp_path, "other", 1)
        assert not server.rescan()  # the repository is its owner's: SIGHUP does not rescan it
        repository.rescan()
        deadline = time.monotonic() + WAIT_S
        while health_of(channel, "other") != SERVING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health_of(channel, "other") == SERVING
        assert len(stub.Predict(request(model="other"), timeout=WAIT_S).predictions) == 1
        other = repository.get("other")
        assert other in server.path.dispatcher.models()

        shutil.rmtree(tmp_path / "other")
        repository.rescan()
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while health_of(channel, "other") != not_serving and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health_of(channel, "other") == not_serving
        with pytest.raises(grpc.RpcError) as gone:
            stub.Predict(request(model="other"), timeout=WAIT_S)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert other not in server.path.dispatcher.models()
        assert health_of(channel, "digits") == SERVING
    repository.unload()


def test_a_request_holds_its_model_version_until_it_is_answered(model_repository, tmp_path):
    """Removing a model while a request for it runs: the repository unloads it only once the
    request, which holds a lease on it, has been answered."""
    import shutil

    shutil.copytree(model_repository / "digits", tmp_path / "digits")
    repository = ModelRepository(tmp_path, RuntimeOptions(device="cpu")).load()
    gate = Gate(repository.get("digits", 2))
    with running_server(repository) as (_, port), own_channel(port) as channel:
        stub = stn_pb2_grpc.StnServiceStub(channel)
        held = stub.Predict.future(request(), timeout=WAIT_S)
        assert gate.entered.wait(WAIT_S)
        shutil.rmtree(tmp_path / "digits" / "2")
        rescanning = threading.Thread(target=repository.rescan)
        rescanning.start()
        time.sleep(0.2)
        assert rescanning.is_alive()  # draining: waits for the request holding version 2
        gate.open()
        assert held.result(WAIT_S).version == 2
        rescanning.join(WAIT_S)
        assert not rescanning.is_alive()
        assert stub.Predict(request(), timeout=WAIT_S).version == 1
    repository.unload()
