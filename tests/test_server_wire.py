"""`predict_wire`: the PredictResponse bytes the server writes parse to the message that filling
a PredictResponse field by field gives, for every layout (one row array, or predictions joined
one by one)."""

from __future__ import annotations

import numpy as np
import pytest

from stn_serve._proto.stn.v1 import stn_pb2
from stn_serve.imaging import encode_png
from stn_serve.server.predict_wire import ResponseLayout, response_bytes, varint
from stn_serve.server.stn_service import response_for, serialized


class Spec:
    def __init__(self, labels, crop_shape, num_params):
        self.labels, self.crop_shape, self.num_params = labels, crop_shape, num_params


class Model:
    def __init__(self, labels, crop_shape=(1, 4, 3), num_params=6, name="digits", version=3):
        self.spec = Spec(labels, crop_shape, num_params)
        self.name, self.version = name, version


def expected(request, model, top_k, outputs) -> stn_pb2.PredictResponse:
    """The response built field by field, as the server did before writing bytes."""
    probabilities, crops, thetas = outputs["probabilities"], outputs["crop"], outputs["theta"]
    response = stn_pb2.PredictResponse(
        model=model.name, version=model.version, request_id=request.request_id
    )
    for i in range(len(probabilities)):
        prediction = response.predictions.add()
        for index in np.argsort(-probabilities[i], kind="stable")[:top_k]:
            prediction.top_k.add(
                index=int(index),
                label=model.spec.labels[index],
                probability=float(probabilities[i, index]),
            )
        prediction.crop.shape.extend(crops.shape[1:])
        prediction.crop.dtype = stn_pb2.DATA_TYPE_FLOAT32
        prediction.crop.data = crops[i].astype("<f4").tobytes()
        prediction.theta.extend(thetas[i].tolist())
        if request.crop_png:
            prediction.crop_png = encode_png(crops[i])
    return response


def outputs_for(count: int, classes: int, crop_shape=(1, 4, 3), params=6, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(count, classes)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return {
        "probabilities": probabilities.astype(np.float32),
        "crop": rng.random((count, *crop_shape), dtype=np.float32),
        "theta": rng.normal(size=(count, params)).astype(np.float32),
    }


@pytest.mark.parametrize("top_k", [1, 3, 10])
@pytest.mark.parametrize("count", [1, 5, 64])
@pytest.mark.parametrize(
    "labels",
    [
        [str(d) for d in range(10)],  # one length: the row array
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        ["ä", "b", "", "dd", "e", "f", "g", "h", "i", "j"],
    ],
)
def test_bytes_parse_to_the_message_field_by_field(labels, count, top_k):
    model = Model(labels)
    outputs = outputs_for(count, len(labels))
    request = stn_pb2.PredictRequest(request_id="r-1")
    written = response_for(request, model, top_k, outputs)
    assert stn_pb2.PredictResponse.FromString(written) == expected(request, model, top_k, outputs)


@pytest.mark.parametrize("request_id", ["", "x" * 300])
def test_png_crops_empty_fields_and_a_layout_made_once(request_id):
    model = Model(
        [str(d) for d in range(10)], crop_shape=(1, 8, 8), num_params=0, name="", version=0
    )
    outputs = outputs_for(3, 10, crop_shape=(1, 8, 8), params=0)
    layout = ResponseLayout(model.spec.labels, (1, 8, 8), 0)
    for crop_png in (False, True):
        request = stn_pb2.PredictRequest(request_id=request_id, crop_png=crop_png)
        written = response_for(request, model, 2, outputs, layout)
        parsed = stn_pb2.PredictResponse.FromString(written)
        assert parsed == expected(request, model, 2, outputs)


def test_many_classes_need_longer_varints():
    labels = [f"c{i:03d}" for i in range(300)]  # indices past 127 take two varint bytes
    model = Model(labels, crop_shape=(3, 5, 7), num_params=8)
    outputs = outputs_for(4, 300, crop_shape=(3, 5, 7), params=8)
    request = stn_pb2.PredictRequest()
    written = response_for(request, model, 5, outputs)
    assert stn_pb2.PredictResponse.FromString(written) == expected(request, model, 5, outputs)


def test_varint_and_serialized():
    assert varint(0) == b"\x00" and varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    message = stn_pb2.PredictResponse(model="m")
    assert serialized(message) == message.SerializeToString()
    assert serialized(b"raw") == b"raw"
    assert (
        response_bytes("m", 2, "", b"")
        == stn_pb2.PredictResponse(model="m", version=2).SerializeToString()
    )
