"""The Open Inference Protocol (KServe v2) through Triton's own client, tritonclient[grpc]."""

from __future__ import annotations

import queue
import re

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient
from conftest import DIGITS_SHAPE, running_server
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from stn_serve.runtime import ModelRepository, RuntimeOptions

OUTPUTS = ["logits", "probabilities", "crop", "theta"]


@pytest.fixture(scope="module")
def repository(model_repository):
    return ModelRepository(model_repository, RuntimeOptions(device="cpu")).load()


@pytest.fixture(scope="module")
def port(repository):
    with running_server(repository, max_images_per_request=8) as (_, port):
        yield port


@pytest.fixture(scope="module")
def client(port):
    client = tritonclient.InferenceServerClient(f"127.0.0.1:{port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def raw_stub(port):
    """Triton's generated stub, for requests tritonclient's helpers do not build (typed contents)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_server_and_model_state(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("digits", "9")
    metadata = client.get_server_metadata()
    assert metadata.name == "stn-serve" and metadata.version


def test_model_metadata(client):
    metadata = client.get_model_metadata("digits")
    assert metadata.name == "digits"
    assert list(metadata.versions) == ["1", "2"]
    assert metadata.platform == "onnxruntime_onnx"
    (image,) = metadata.inputs
    assert (image.name, image.datatype, list(image.shape)) == ("image", "FP32", [-1, *DIGITS_SHAPE])
    assert {o.name: list(o.shape) for o in metadata.outputs} == {
        "logits": [-1, 10],
        "probabilities": [-1, 10],
        "crop": [-1, *DIGITS_SHAPE],
        "theta": [-1, 6],
    }


def test_infer_raw_contents_all_outputs(client, repository, digits_images):
    image = tritonclient.InferInput("image", list(digits_images.shape), "FP32")
    image.set_data_from_numpy(digits_images)
    result = client.infer("digits", [image], request_id="req-7")
    expected = repository.get("digits").predict(digits_images)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("digits", "2", "req-7")
    assert [o.name for o in response.outputs] == OUTPUTS
    for name in OUTPUTS:
        np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=1e-5, atol=1e-6)


def test_infer_honours_requested_outputs_and_version(client, repository, digits_images):
    image = tritonclient.InferInput("image", [2, *DIGITS_SHAPE], "FP32")
    image.set_data_from_numpy(digits_images[:2])
    outputs = [
        tritonclient.InferRequestedOutput("theta"),
        tritonclient.InferRequestedOutput("crop"),
    ]
    result = client.infer("digits", [image], model_version="1", outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["theta", "crop"]
    assert result.as_numpy("logits") is None
    expected = repository.get("digits", 1).predict(digits_images[:2])
    np.testing.assert_allclose(result.as_numpy("theta"), expected["theta"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("crop"), expected["crop"], atol=1e-6)


def _typed_request(images: np.ndarray, shape=None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(
        name="image", datatype="FP32", shape=images.shape if shape is None else shape
    )
    tensor.contents.fp32_contents.extend(images.ravel().tolist())
    return request


def test_infer_typed_contents(raw_stub, repository, digits_images):
    request = _typed_request(digits_images[:3])
    request.outputs.add(name="probabilities")
    response = raw_stub.ModelInfer(request, timeout=30)
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [3, 10])
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(3, 10)
    expected = repository.get("digits").predict(digits_images[:3])["probabilities"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _raw_request(
    images: np.ndarray, name="image", datatype="FP32", shape=None, data=None, outputs=()
):
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name=name, datatype=datatype, shape=images.shape if shape is None else shape)
    request.raw_input_contents.append(images.tobytes() if data is None else data)
    for output in outputs:
        request.outputs.add(name=output)
    return request


ONE = np.zeros((1, *DIGITS_SHAPE), np.float32)
NAN = ONE.copy()
NAN[0, 0, 1, 1] = np.nan
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _both_contents():
    request = _typed_request(ONE)
    request.raw_input_contents.append(ONE.tobytes())
    return request


BAD_INFERS = {
    "input-name": (
        _raw_request(ONE, name="pixels"),
        INVALID,
        r"exactly one input named 'image', got \['pixels'\]",
    ),
    "datatype": (_raw_request(ONE, datatype="FP64"), INVALID, "datatype 'FP64'; expected 'FP32'"),
    "shape": (
        _raw_request(ONE, shape=[1, 28, 28]),
        INVALID,
        r"shape \[1, 28, 28\]; expected \[N, 1, 28, 28\]",
    ),
    "raw-byte-count": (
        _raw_request(ONE, data=b"\0" * 10),
        INVALID,
        r"10 bytes; FP32 \[1, 1, 28, 28\] needs 3136",
    ),
    "typed-count": (
        _typed_request(ONE[:, :, :2], shape=ONE.shape),
        INVALID,
        r"56 fp32_contents; shape \[1, 1, 28, 28\] needs 784",
    ),
    "both-contents": (_both_contents(), INVALID, "sets both contents and raw_input_contents"),
    "nan": (_raw_request(NAN), INVALID, "NaN or infinite"),
    "no-images": (_raw_request(ONE[:0]), INVALID, "holds no images"),
    "too-many": (
        _raw_request(np.zeros((9, *DIGITS_SHAPE), np.float32)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "holds 9 images, more than the limit of 8",
    ),
    "unknown-output": (_raw_request(ONE, outputs=["mask"]), INVALID, r"unknown outputs \['mask'\]"),
    "unknown-model": (
        service_pb2.ModelInferRequest(model_name="nope"),
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'nope'",
    ),
    "bad-version": (
        service_pb2.ModelInferRequest(model_name="digits", model_version="latest"),
        INVALID,
        "model version must be a positive integer, got 'latest'",
    ),
    "non-ascii-version": (
        service_pb2.ModelInferRequest(model_name="digits", model_version="\u00b2"),
        INVALID,
        "model version must be a positive integer, got '\u00b2'",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INFERS))
def test_bad_infer_is_refused_and_server_keeps_answering(raw_stub, client, name):
    request, code, message = BAD_INFERS[name]
    with pytest.raises(grpc.RpcError) as error:
        raw_stub.ModelInfer(request, timeout=30)
    assert error.value.code() == code
    assert re.search(message, error.value.details()), error.value.details()
    image = tritonclient.InferInput("image", list(ONE.shape), "FP32")
    image.set_data_from_numpy(ONE)
    assert client.infer("digits", [image]).as_numpy("logits").shape == (1, 10)


def test_tritonclient_reports_errors_with_the_server_message(client):
    image = tritonclient.InferInput("image", [1, 3, 28, 28], "FP32")
    image.set_data_from_numpy(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(InferenceServerException, match=r"expected \[N, 1, 28, 28\]"):
        client.infer("digits", [image])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


def test_stream_infer_answers_in_order_and_goes_on_after_a_bad_request(repository, digits_images):
    """tritonclient's start_stream / async_stream_infer: each request gets its answer in order; a
    bad one gets its error and the requests after it are still answered."""
    results = queue.Queue()
    with running_server(repository, metrics_port=0) as (server, port):
        client = tritonclient.InferenceServerClient(f"127.0.0.1:{port}")
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        sent = []
        for index, image in enumerate(digits_images):
            if index == 2:
                wrong = tritonclient.InferInput("image", [1, 3, 28, 28], "FP32")
                wrong.set_data_from_numpy(np.zeros((1, 3, 28, 28), np.float32))
                client.async_stream_infer("digits", [wrong], request_id="bad")
                sent.append(None)
            one = tritonclient.InferInput("image", [1, *DIGITS_SHAPE], "FP32")
            one.set_data_from_numpy(image[None])
            client.async_stream_infer("digits", [one], request_id=f"r{index}")
            sent.append(index)
        client.stop_stream()  # half-closes the stream and waits for every answer
        client.close()
        answered = [results.get(timeout=30) for _ in sent]
        assert results.empty()
        model = repository.get("digits")
        for index, (result, error) in zip(sent, answered):
            if index is None:
                assert result is None
                assert re.search(r"\[INVALID_ARGUMENT\] .*expected \[N, 1, 28, 28\]", str(error))
                continue
            assert error is None, error
            assert result.get_response().id == f"r{index}"
            np.testing.assert_allclose(
                result.as_numpy("probabilities"),
                model.predict(digits_images[index][None])["probabilities"],
                rtol=1e-5,
                atol=1e-6,
            )
        counts = {
            code: server.metrics.sample(
                "stn_requests_total",
                {"method": "ModelStreamInfer", "model": "digits", "code": code},
            )
            for code in ("OK", "INVALID_ARGUMENT")
        }
        assert counts == {"OK": len(digits_images), "INVALID_ARGUMENT": 1}
