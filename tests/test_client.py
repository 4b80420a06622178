"""`stn_serve.client`, `stn-serve predict` and the health-check entry point against a real server
(create_server on 127.0.0.1 port 0, serving the `model_repository` fixture)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from conftest import running_server
from PIL import Image

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.cli import main
from stn_serve.client import ClassScore, Client, ModelInfo, Prediction, VersionState
from stn_serve.client.channel import channel_options
from stn_serve.client.healthcheck import check
from stn_serve.errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    ResourceExhaustedError,
)
from stn_serve.runtime import ModelRepository, RuntimeOptions


@pytest.fixture(scope="module")
def server_port(model_repository):
    with running_server(model_repository) as (_, port):
        yield port


@pytest.fixture
def client(server_port):
    with Client(f"127.0.0.1:{server_port}", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def local_model(model_repository):
    """The newest `digits` version on an in-process session: the reference the server must match."""
    return ModelRepository(model_repository, RuntimeOptions(device="cpu")).load().get("digits")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_arrays_matches_the_model(client, local_model, digits_images):
    predictions = client.predict(digits_images, top_k=3)
    expected = local_model.predict(digits_images)
    assert len(predictions) == len(digits_images)
    for row, prediction in enumerate(predictions):
        assert isinstance(prediction, Prediction)
        assert (prediction.model, prediction.version) == ("digits", 2)
        # The server may run on CUDA while the reference runs on the CPU: an untrained model's
        # probabilities nearly tie, so compare values (to float32 rounding across providers),
        # not the order of near-equal classes.
        probabilities = expected["probabilities"][row]
        returned = [s.probability for s in prediction.top_k]
        assert returned == sorted(returned, reverse=True)
        np.testing.assert_allclose(
            returned, probabilities[[s.index for s in prediction.top_k]], atol=1e-5
        )
        np.testing.assert_allclose(returned, np.sort(probabilities)[::-1][:3], atol=1e-5)
        assert all(isinstance(s, ClassScore) and s.label == str(s.index) for s in prediction.top_k)
        assert prediction.label == prediction.top_k[0].label
        assert prediction.crop.dtype == np.float32 and prediction.crop.shape == (1, 28, 28)
        np.testing.assert_allclose(prediction.crop, expected["crop"][row], atol=1e-5)
        np.testing.assert_allclose(prediction.theta, expected["theta"][row], atol=1e-6)


def test_every_input_form_gives_the_same_answer(client, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    path = tmp_path / "digit.png"
    path.write_bytes(png(pixels))
    forms = [
        str(path),
        path,
        png(pixels),
        Image.fromarray(pixels),
        pixels,
        pixels[None],
        pixels[None].astype(np.float32) / 255.0,
    ]
    predictions = client.predict(forms)
    for prediction in predictions[1:]:
        assert [s.index for s in prediction.top_k] == [s.index for s in predictions[0].top_k]
        np.testing.assert_allclose(prediction.theta, predictions[0].theta, atol=1e-5)
    (single,) = client.predict(path)
    assert [s.index for s in single.top_k] == [s.index for s in predictions[0].top_k]


def test_predict_an_older_version(client, digits_images):
    (old,) = client.predict(digits_images[0], version=1)
    (new,) = client.predict(digits_images[0])
    assert (old.version, new.version) == (1, 2)
    # Both versions start at the identity transform, so their theta agree; their classifiers
    # were initialised from different seeds.
    old_scores = {s.index: s.probability for s in old.top_k}
    new_scores = {s.index: s.probability for s in new.top_k}
    assert old_scores != new_scores, "versions hold different weights"


def test_stream_answers_each_request_in_order(client, digits_images):
    sent = []

    def batches():
        for size in (1, 3, 2):
            sent.append(size)
            yield digits_images[:size]

    answers = list(client.predict_stream(batches(), top_k=2))
    assert [len(a) for a in answers] == [1, 3, 2] == sent
    assert all(len(p.top_k) == 2 for answer in answers for p in answer)
    np.testing.assert_allclose(answers[1][0].theta, answers[0][0].theta, atol=1e-6)


def test_stream_stops_at_an_element_that_cannot_be_sent(client, digits_images):
    stream = client.predict_stream([digits_images[:2], [3], digits_images[:1]])
    assert len(next(stream)) == 2
    with pytest.raises(InvalidInputError, match="got int"):
        next(stream)


def test_stream_reports_a_request_the_server_refuses(client, digits_images):
    with pytest.raises(NotFoundError, match="unknown model 'nope'"):
        list(client.predict_stream([digits_images[:1]], model="nope"))


def test_list_models_and_describe(client):
    (model,) = client.list_models()
    assert model == ModelInfo(
        name="digits",
        version=2,
        versions=[1, 2],
        labels=[str(d) for d in range(10)],
        input_shape=(1, 28, 28),
        crop_shape=(1, 28, 28),
        transform="affine",
        num_params=6,
        execution_provider="CPUExecutionProvider",
        ready=True,
        states=[VersionState(1, "READY"), VersionState(2, "READY")],
    )
    assert client.describe("digits", 1).version == 1
    assert client.describe().name == "digits"
    assert client.describe().states == model.states


def test_errors_become_domain_exceptions_naming_the_problem(client, digits_images):
    with pytest.raises(NotFoundError, match="unknown model 'nope'"):
        client.predict(digits_images[0], model="nope")
    with pytest.raises(NotFoundError, match="no version 9"):
        client.describe("digits", 9)
    with pytest.raises(InvalidInputError, match=r"shape \[1, 27, 27\]"):
        client.predict(np.zeros((1, 27, 27), np.float32))
    with pytest.raises(InvalidInputError, match=r"images\[0\].*PNG or JPEG"):
        client.predict(b"not an image")
    with pytest.raises(InvalidInputError, match="got int"):
        client.predict([3])
    with pytest.raises(InvalidInputError, match="got dtype int64"):
        client.predict(np.zeros((28, 28), np.int64))
    with pytest.raises(NotFoundError, match="does not exist"):
        client.predict("/no/such/file.png")


class _SlowStnService(stn_pb2_grpc.StnServiceServicer):
    """Answers nothing before the client's deadline has certainly passed."""

    def __init__(self, release: threading.Event):
        self.release = release

    def Predict(self, request, context):
        self.release.wait(10)
        return stn_pb2.PredictResponse()


def test_a_missed_deadline_becomes_deadline_exceeded(digits_images):
    # gRPC deadlines are about a millisecond coarse, so a fast server may beat a tiny timeout:
    # hold the answer instead of racing it.
    release = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    stn_pb2_grpc.add_StnServiceServicer_to_server(_SlowStnService(release), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}") as client, pytest.raises(DeadlineExceededError):
            client.predict(digits_images[0], timeout=0.2)
    finally:
        release.set()
        server.stop(grace=None)


class _PeerRecorder(stn_pb2_grpc.StnServiceServicer):
    """Records the client address (one per connection) of every Predict."""

    def __init__(self):
        self.peers = []

    def Predict(self, request, context):
        self.peers.append(context.peer())
        return stn_pb2.PredictResponse(predictions=[stn_pb2.Prediction()] * len(request.images))


def test_channels_spread_calls_over_that_many_connections(digits_images):
    recorder = _PeerRecorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    stn_pb2_grpc.add_StnServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", channels=3) as client:
            client.wait_ready()
            for _ in range(6):
                assert len(client.predict(digits_images[0])) == 1
    finally:
        server.stop(grace=None)
    assert len(set(recorder.peers)) == 3
    assert all(recorder.peers.count(peer) == 2 for peer in recorder.peers)
    with pytest.raises(InvalidInputError, match="channels must be at least 1"):
        Client(f"127.0.0.1:{port}", channels=0)


def test_max_message_mb_limits_what_the_client_sends(server_port, digits_images):
    with (
        Client(f"127.0.0.1:{server_port}", max_message_mb=0.001) as small,
        pytest.raises(ResourceExhaustedError),
    ):
        small.predict(digits_images)


def test_unreachable_server(digits_images):
    with Client("127.0.0.1:1", timeout=2) as client:
        with pytest.raises(NotReadyError, match="127.0.0.1:1: UNAVAILABLE"):
            client.predict(digits_images[0])
        with pytest.raises(NotReadyError, match="no connection within 0.2 s"):
            client.wait_ready(0.2)


def test_channel_asks_for_round_robin():
    options = dict(channel_options(8))
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert options["grpc.max_receive_message_length"] == 8 * 1024 * 1024


def test_round_robin_spreads_requests_over_every_resolved_address(model_repository, digits_images):
    # A target naming two addresses stands in for a headless Service's DNS answer: with the default
    # pick_first policy every request would go to the first server.
    labels = {"method": "Predict", "model": "digits", "code": "OK"}
    with (
        running_server(model_repository) as (first, port_a),
        running_server(model_repository) as (second, port_b),
        Client(f"ipv4:127.0.0.1:{port_a},127.0.0.1:{port_b}") as client,
    ):

        def counts() -> list[float]:
            return [s.metrics.sample("stn_requests_total", labels) or 0 for s in (first, second)]

        # The channel is ready once one address connects; the other may take a moment more.
        for _ in range(200):
            client.predict(digits_images[0])
            if min(counts()) > 0:
                break
        assert min(counts()) > 0, counts()
        before = counts()
        for _ in range(20):
            client.predict(digits_images[0])
        spread = [after - start for after, start in zip(counts(), before)]
    assert spread == [10, 10], spread


def test_dns_target(server_port, digits_images):
    with Client(f"dns:///localhost:{server_port}") as client:
        assert client.predict(digits_images[0])[0].version == 2


def test_healthcheck_reports_serving(server_port):
    assert check(f"127.0.0.1:{server_port}") == "SERVING"
    assert check(f"127.0.0.1:{server_port}", "digits") == "SERVING"
    assert check(f"127.0.0.1:{server_port}", "no-such-model") == "NOT_FOUND"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stn_serve.client.healthcheck",
            "--address",
            f"127.0.0.1:{server_port}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "SERVING" in result.stdout


def test_predict_command_prints_top_k_and_saves_crops(server_port, tmp_path, capsys):
    images = []
    for index in range(2):
        path = tmp_path / f"digit{index}.png"
        path.write_bytes(png(np.full((28, 28), 80 * index, np.uint8)))
        images.append(str(path))
    crops = tmp_path / "crops"
    code = main(
        [
            "predict",
            "--server",
            f"127.0.0.1:{server_port}",
            "--top-k",
            "3",
            "--save-crops",
            str(crops),
            *images,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for image in images:
        assert f"{image}  (digits v2)" in out
    assert out.count("  1. ") == 2 and out.count("  3. ") == 2 and "  4. " not in out
    assert out.count("theta: ") == 2
    for index in range(2):
        with Image.open(crops / f"digit{index}.png") as crop:
            assert crop.size == (28, 28)

    assert (
        main(
            [
                "predict",
                "--server",
                f"127.0.0.1:{server_port}",
                "--json",
                "--version",
                "1",
                images[0],
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["file"] == images[0] and record["version"] == 1 and len(record["top_k"]) == 5


def test_predict_command_reports_bad_images_and_predicts_the_rest(server_port, tmp_path, capsys):
    good, bad, missing = tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "missing.png"
    good.write_bytes(png(np.zeros((28, 28), np.uint8)))
    bad.write_bytes(b"nope")
    assert (
        main(["predict", "--server", f"127.0.0.1:{server_port}", str(bad), str(good), str(missing)])
        == 1
    )
    captured = capsys.readouterr()
    assert f"{good}  (digits v2)" in captured.out and str(bad) not in captured.out
    assert f"error: {bad}: " in captured.err and "PNG or JPEG" in captured.err
    # The server's name for it (images[0] of the request) means nothing to the user: its path.
    errors = "\n".join(line for line in captured.err.splitlines() if line.startswith("error: "))
    assert f"{bad} (4 bytes) is not an image" in errors and "images[0]" not in errors
    assert f"error: {missing}: cannot read" in captured.err
