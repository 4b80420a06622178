"""The gRPC server end to end on 127.0.0.1 port 0: stn.v1, the Open Inference Protocol through
tritonclient, health, reflection, and bad input of every kind."""

from __future__ import annotations

import io
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import DIGITS_LABELS, DIGITS_SHAPE, cuda_usable, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.runtime import ModelRepository, RuntimeOptions

CPU_ONLY = RuntimeOptions(device="cpu")


@pytest.fixture(scope="module")
def repository(model_repository):
    return ModelRepository(model_repository, CPU_ONLY).load()


@pytest.fixture(scope="module")
def server(repository):
    with running_server(repository, max_images_per_request=8, max_message_mb=1) as (server, _):
        yield server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return stn_pb2_grpc.StnServiceStub(channel)


def tensor_image(array: np.ndarray, dtype=stn_pb2.DATA_TYPE_FLOAT32) -> stn_pb2.Image:
    return stn_pb2.Image(
        tensor=stn_pb2.Tensor(shape=array.shape, dtype=dtype, data=array.tobytes())
    )


def encoded_image(array_hwc: np.ndarray, fmt: str) -> stn_pb2.Image:
    buffer = io.BytesIO()
    Image.fromarray(array_hwc).save(buffer, format=fmt)
    return stn_pb2.Image(encoded=buffer.getvalue())


def good_request(image: np.ndarray | None = None, **fields) -> stn_pb2.PredictRequest:
    image = np.full(DIGITS_SHAPE, 0.5, np.float32) if image is None else image
    return stn_pb2.PredictRequest(model="digits", images=[tensor_image(image)], **fields)


def assert_matches_model(prediction, model, image: np.ndarray, top_k: int = 5, tolerance=1e-5):
    """`prediction` is what `model` gives for `image`: the top_k most probable classes in
    descending order, their labels and probabilities, the crop and theta."""
    expected = model.predict(image[None])
    probabilities = expected["probabilities"][0]
    indices = [c.index for c in prediction.top_k]
    got = np.array([c.probability for c in prediction.top_k])
    assert len(indices) == top_k
    assert [c.label for c in prediction.top_k] == [DIGITS_LABELS[i] for i in indices]
    np.testing.assert_allclose(got, probabilities[indices], rtol=tolerance, atol=tolerance)
    assert np.all(np.diff(got) <= 0)
    left_out = np.delete(probabilities, indices)
    assert left_out.size == 0 or got[-1] >= left_out.max() - tolerance
    crop = np.frombuffer(prediction.crop.data, "<f4").reshape(prediction.crop.shape)
    np.testing.assert_allclose(crop, expected["crop"][0], atol=max(tolerance, 1e-6))
    np.testing.assert_allclose(
        prediction.theta, expected["theta"][0], rtol=tolerance, atol=tolerance
    )


# --- stn.v1 -----------------------------------------------------------------------------------


def test_predict_raw_float32_tensors_newest_version(stub, repository, digits_images):
    response = stub.Predict(
        stn_pb2.PredictRequest(
            model="digits", images=[tensor_image(im) for im in digits_images], request_id="r1"
        )
    )
    assert (response.model, response.version, response.request_id) == ("digits", 2, "r1")
    assert len(response.predictions) == len(digits_images)
    for prediction, image in zip(response.predictions, digits_images):
        assert_matches_model(prediction, repository.get("digits", 2), image)


def test_predict_named_version_top_k_and_crop_png(stub, repository, digits_images):
    response = stub.Predict(
        stn_pb2.PredictRequest(
            model="digits",
            version=1,
            images=[tensor_image(digits_images[0])],
            top_k=3,
            crop_png=True,
        )
    )
    assert response.version == 1
    prediction = response.predictions[0]
    assert_matches_model(prediction, repository.get("digits", 1), digits_images[0], top_k=3)
    png = Image.open(io.BytesIO(prediction.crop_png))
    assert (png.format, png.size, png.mode) == ("PNG", (28, 28), "L")
    crop = np.frombuffer(prediction.crop.data, "<f4").reshape(DIGITS_SHAPE)
    np.testing.assert_allclose(np.asarray(png) / 255.0, crop[0], atol=0.5 / 255 + 1e-6)


def test_predict_uint8_and_two_dimensional_tensors(stub, repository):
    pixels = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    response = stub.Predict(
        stn_pb2.PredictRequest(
            model="digits",
            images=[
                tensor_image(pixels, stn_pb2.DATA_TYPE_UINT8),
                tensor_image(pixels[None], stn_pb2.DATA_TYPE_UINT8),
            ],
        )
    )
    expected = (pixels.astype(np.float32) / 255.0)[None]
    for prediction in response.predictions:
        assert_matches_model(prediction, repository.get("digits"), expected)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_predict_encoded_image_of_any_size_is_converted_and_resized(stub, repository, fmt):
    rgb = np.random.default_rng(2).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    image = encoded_image(rgb, fmt)
    response = stub.Predict(stn_pb2.PredictRequest(model="digits", images=[image]))
    decoded = (
        Image.open(io.BytesIO(image.encoded))
        .convert("L")
        .resize((28, 28), Image.Resampling.BILINEAR)
    )
    expected = (np.asarray(decoded, np.float32) / 255.0)[None]
    assert_matches_model(response.predictions[0], repository.get("digits"), expected)


def test_predict_stream_answers_each_request_in_order(stub, repository, digits_images):
    requests = [good_request(image, request_id=f"s{i}") for i, image in enumerate(digits_images)]
    responses = list(stub.PredictStream(iter(requests), timeout=60))
    assert [r.request_id for r in responses] == [f"s{i}" for i in range(len(digits_images))]
    for response, image in zip(responses, digits_images):
        assert_matches_model(response.predictions[0], repository.get("digits"), image)


def test_predict_stream_ends_with_the_status_of_a_bad_request(stub):
    requests = [
        good_request(request_id="ok"),
        stn_pb2.PredictRequest(
            model="nope", images=[tensor_image(np.zeros(DIGITS_SHAPE, np.float32))]
        ),
    ]
    stream = stub.PredictStream(iter(requests), timeout=60)
    assert next(stream).request_id == "ok"
    with pytest.raises(grpc.RpcError) as error:
        next(stream)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_and_describe_models(stub):
    (description,) = stub.ListModels(stn_pb2.ListModelsRequest()).models
    assert (description.name, description.version, list(description.versions)) == (
        "digits",
        2,
        [1, 2],
    )
    assert list(description.labels) == DIGITS_LABELS
    assert list(description.input_shape) == list(DIGITS_SHAPE)
    assert list(description.crop_shape) == list(DIGITS_SHAPE)
    assert (description.transform, description.num_params) == ("affine", 6)
    assert description.execution_provider == "CPUExecutionProvider" and description.ready
    assert stub.DescribeModel(stn_pb2.DescribeModelRequest(model="digits", version=1)).version == 1


# --- bad input: every one answered with a status naming the problem, the server still answers ---

ZEROS = np.zeros(DIGITS_SHAPE, np.float32)
NAN = ZEROS.copy()
NAN[0, 3, 4] = np.nan
INF = ZEROS.copy()
INF[0, 0, 0] = np.inf
BIG = np.full(DIGITS_SHAPE, 2.0, np.float32)
INVALID, NOT_FOUND, EXHAUSTED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png() -> stn_pb2.Image:
    """A 200-byte PNG whose header claims 8000 x 8000 pixels."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0))
    data = _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
    return stn_pb2.Image(encoded=b"\x89PNG\r\n\x1a\n" + header + data + _png_chunk(b"IEND", b""))


def _gif() -> stn_pb2.Image:
    return encoded_image(np.zeros((8, 8), np.uint8), "GIF")


BAD_PREDICTS = {
    "undecodable": (
        stn_pb2.PredictRequest(model="digits", images=[stn_pb2.Image(encoded=b"\x89PNG junk")]),
        INVALID,
        r"images\[0\] \(9 bytes\) is not an image Pillow can read; expected PNG or JPEG",
    ),
    "truncated-png": (
        stn_pb2.PredictRequest(
            model="digits",
            images=[
                stn_pb2.Image(
                    encoded=encoded_image(
                        np.arange(1024, dtype=np.uint8).reshape(32, 32), "PNG"
                    ).encoded[:60]
                )
            ],
        ),
        INVALID,
        r"images\[0\] cannot be decoded as PNG or JPEG",
    ),
    "huge-png": (
        stn_pb2.PredictRequest(model="digits", images=[_huge_png()]),
        INVALID,
        r"images\[0\] is 8000x8000; expected at most 40000000 pixels",
    ),
    "gif": (
        stn_pb2.PredictRequest(model="digits", images=[_gif()]),
        INVALID,
        r"images\[0\] is GIF; expected one of \['PNG', 'JPEG'\]",
    ),
    "wrong-shape": (
        stn_pb2.PredictRequest(
            model="digits", images=[tensor_image(np.zeros((3, 28, 28), np.float32))]
        ),
        INVALID,
        r"images\[0\] has shape \[3, 28, 28\]; expected \[1, 28, 28\] or \[28, 28\]",
    ),
    "wrong-dtype": (
        stn_pb2.PredictRequest(
            model="digits", images=[tensor_image(ZEROS, stn_pb2.DATA_TYPE_UNSPECIFIED)]
        ),
        INVALID,
        "expected DATA_TYPE_UINT8 or DATA_TYPE_FLOAT32",
    ),
    "byte-count": (
        stn_pb2.PredictRequest(
            model="digits",
            images=[
                stn_pb2.Image(
                    tensor=stn_pb2.Tensor(
                        shape=[1, 28, 28], dtype=stn_pb2.DATA_TYPE_FLOAT32, data=b"\0" * 100
                    )
                )
            ],
        ),
        INVALID,
        r"has 100 bytes; shape \[1, 28, 28\] of float32 needs 3136",
    ),
    "nan": (
        stn_pb2.PredictRequest(model="digits", images=[tensor_image(NAN)]),
        INVALID,
        "NaN or infinite",
    ),
    "inf": (
        stn_pb2.PredictRequest(model="digits", images=[tensor_image(INF)]),
        INVALID,
        "NaN or infinite",
    ),
    "out-of-range": (
        stn_pb2.PredictRequest(model="digits", images=[tensor_image(BIG)]),
        INVALID,
        r"values in \[2, 2\]; expected values in \[0, 1\]",
    ),
    "no-images": (stn_pb2.PredictRequest(model="digits"), INVALID, "holds no images"),
    "empty-image": (
        stn_pb2.PredictRequest(model="digits", images=[stn_pb2.Image()]),
        INVALID,
        r"images\[0\] is empty",
    ),
    "too-many-images": (
        stn_pb2.PredictRequest(model="digits", images=[tensor_image(ZEROS)] * 9),
        EXHAUSTED,
        "holds 9 images, more than the limit of 8",
    ),
    "over-max-message": (
        stn_pb2.PredictRequest(model="digits", images=[stn_pb2.Image(encoded=b"\0" * (2 << 20))]),
        EXHAUSTED,
        "larger than max",
    ),
    "unknown-model": (
        stn_pb2.PredictRequest(model="nope", images=[tensor_image(ZEROS)]),
        NOT_FOUND,
        r"unknown model 'nope'; loaded models: \['digits'\]",
    ),
    "unknown-version": (
        stn_pb2.PredictRequest(model="digits", version=9, images=[tensor_image(ZEROS)]),
        NOT_FOUND,
        r"no version 9; loaded versions: \[1, 2\]",
    ),
    "negative-top-k": (
        stn_pb2.PredictRequest(model="digits", top_k=-1, images=[tensor_image(ZEROS)]),
        INVALID,
        "top_k must be >= 0",
    ),
}


@pytest.mark.parametrize("name", list(BAD_PREDICTS))
def test_bad_predict_is_refused_and_server_keeps_answering(stub, name):
    request, code, message = BAD_PREDICTS[name]
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == code
    assert re.search(message, error.value.details()), error.value.details()
    assert len(stub.Predict(good_request(), timeout=30).predictions) == 1


def test_bad_requests_do_not_affect_good_ones_sent_with_them(stub, repository, digits_images):
    bad = [BAD_PREDICTS[name][0] for name in ("nan", "wrong-shape", "undecodable", "unknown-model")]
    good = [good_request(image) for image in digits_images]

    def call(request):
        try:
            return stub.Predict(request, timeout=60)
        except grpc.RpcError as error:
            return error.code()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, [r for pair in zip(good, bad) for r in pair]))
    for response, image in zip(results[0::2], digits_images):
        assert_matches_model(response.predictions[0], repository.get("digits"), image)
    assert all(code in (INVALID, NOT_FOUND) for code in results[1::2])


def test_unexpected_error_is_internal_with_a_generic_message(repository, caplog):
    with running_server(ModelRepository(repository.root, CPU_ONLY).load()) as (server, port):
        model = server.repository.get("digits")

        def explode(images):
            raise RuntimeError("secret detail")

        model.predict = explode
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            pytest.raises(grpc.RpcError) as error,
        ):
            stn_pb2_grpc.StnServiceStub(channel).Predict(good_request(), timeout=30)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in error.value.details()
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)


# --- health and reflection --------------------------------------------------------------------


def test_health_overall_and_per_model(channel):
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == serving
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="digits"), timeout=10).status == serving
    )
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert error.value.code() == NOT_FOUND


def test_reflection_lists_and_describes_every_service(channel):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == {
        "stn.v1.StnService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    pool = DescriptorPool(database)
    service = pool.FindServiceByName("inference.GRPCInferenceService")
    assert "ModelInfer" in [m.name for m in service.methods]
    predict = pool.FindServiceByName("stn.v1.StnService").methods_by_name["Predict"]
    assert predict.input_type.full_name == "stn.v1.PredictRequest"


@pytest.mark.gpu
def test_serves_on_the_cuda_execution_provider(model_repository, repository, digits_images):
    if not cuda_usable():
        pytest.skip("the CUDA execution provider cannot be used here")
    with running_server(model_repository, runtime_options=RuntimeOptions(device="cuda")) as (
        server,
        port,
    ):
        assert {m.provider for m in server.repository.models()} == {"CUDAExecutionProvider"}
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stn_pb2_grpc.StnServiceStub(channel)
            description = stub.DescribeModel(stn_pb2.DescribeModelRequest(model="digits"))
            assert description.execution_provider == "CUDAExecutionProvider"
            response = stub.Predict(
                stn_pb2.PredictRequest(
                    model="digits", images=[tensor_image(im) for im in digits_images]
                ),
                timeout=60,
            )
    for prediction, image in zip(response.predictions, digits_images):
        assert_matches_model(prediction, repository.get("digits"), image, tolerance=1e-4)
