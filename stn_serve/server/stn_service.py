"""`stn.v1.StnService`: converts between stn.v1 messages and arrays; the runtime does the rest."""

from __future__ import annotations

import numpy as np

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.contract import DEFAULT_TOP_K
from stn_serve.errors import InvalidInputError
from stn_serve.imaging import decode_encoded, encode_png
from stn_serve.server.images import check_count, decode_raw
from stn_serve.server.status import Call, answering
from stn_serve.server.streams import started_in_order

DTYPES = {stn_pb2.DATA_TYPE_UINT8: "uint8", stn_pb2.DATA_TYPE_FLOAT32: "float32"}


def image_array(image: stn_pb2.Image, shape: tuple[int, int, int], index: int) -> np.ndarray:
    """One image of a request -> float32[C, H, W] in [0, 1]; errors name it as images[index]."""
    what = f"images[{index}]"
    source = image.WhichOneof("source")
    if source == "encoded":
        return decode_encoded(image.encoded, shape, what)
    if source == "tensor":
        tensor = image.tensor
        if tensor.dtype not in DTYPES:
            raise InvalidInputError(
                f"{what} has dtype {tensor.dtype}; expected DATA_TYPE_UINT8 or DATA_TYPE_FLOAT32"
            )
        dtype = DTYPES[tensor.dtype]
        return decode_raw(tensor.data, list(tensor.shape), dtype, shape, what)
    raise InvalidInputError(f"{what} is empty; set encoded (PNG/JPEG bytes) or tensor")


def _same_raw_tensors(images, shape: tuple[int, int, int]) -> np.ndarray | None:
    """All `images` as one float32[N, C, H, W] when every one is a raw tensor of the first one's
    dtype, shape and byte count: one copy and one check for the whole request instead of one per
    image. None when any differs or the whole fails a check; the per-image path then names the
    image at fault."""
    first = images[0]
    if first.WhichOneof("source") != "tensor" or first.tensor.dtype not in DTYPES:
        return None
    dtype, dims, size = first.tensor.dtype, first.tensor.shape, len(first.tensor.data)
    parts = []
    for image in images:
        if image.WhichOneof("source") != "tensor":
            return None
        tensor = image.tensor
        if tensor.dtype != dtype or tensor.shape != dims or len(tensor.data) != size:
            return None
        parts.append(tensor.data)
    try:
        return decode_raw(
            b"".join(parts), list(dims), DTYPES[dtype], shape, "images", count=len(images)
        )
    except InvalidInputError:
        return None


def request_images(images, shape: tuple[int, int, int], max_images: int) -> np.ndarray:
    """A request's images -> float32[N, C, H, W] in [0, 1]; each error names the image."""
    check_count(len(images), max_images)
    batch = _same_raw_tensors(images, shape)
    if batch is not None:
        return batch
    return np.stack([image_array(image, shape, i) for i, image in enumerate(images)])


def describe(model, versions: list[int]) -> stn_pb2.ModelDescription:
    spec = model.spec
    return stn_pb2.ModelDescription(
        name=spec.name,
        version=spec.version,
        versions=versions,
        labels=spec.labels,
        input_shape=spec.input_shape,
        crop_shape=spec.crop_shape,
        transform=spec.transform,
        num_params=spec.num_params,
        execution_provider=model.provider or "",
        ready=model.ready,
    )


def response_for(
    request, model, top_k: int, outputs: dict[str, np.ndarray]
) -> stn_pb2.PredictResponse:
    """The batch's outputs ({probabilities [N, K], crop [N, C, h, w], theta [N, P]}) as a
    PredictResponse. Sorting and the conversions to Python numbers and bytes happen once for the
    whole request; per image only the fields are set (the cheapest way to fill upb messages)."""
    probabilities, crops, thetas = outputs["probabilities"], outputs["crop"], outputs["theta"]
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    top_probabilities = np.take_along_axis(probabilities, order, axis=1).tolist()
    labels = model.spec.labels
    crop_shape = crops.shape[1:]
    crop_bytes = np.ascontiguousarray(crops, "<f4").tobytes()
    crop_size = len(crop_bytes) // max(len(crops), 1)
    response = stn_pb2.PredictResponse(
        model=model.name, version=model.version, request_id=request.request_id
    )
    for i, (indices, scores, theta) in enumerate(
        zip(order.tolist(), top_probabilities, thetas.tolist())
    ):
        prediction = response.predictions.add()
        for index, probability in zip(indices, scores):
            score = prediction.top_k.add()
            score.index, score.label, score.probability = index, labels[index], probability
        crop = prediction.crop
        crop.shape.extend(crop_shape)
        crop.dtype = stn_pb2.DATA_TYPE_FLOAT32
        crop.data = crop_bytes[i * crop_size : (i + 1) * crop_size]
        prediction.theta.extend(theta)
        if request.crop_png:
            prediction.crop_png = encode_png(crops[i])
    return response


class StnServicer(stn_pb2_grpc.StnServiceServicer):
    def __init__(self, repository, dispatcher, metrics, max_images_per_request: int):
        self.repository = repository
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.max_images = max_images_per_request

    def _start(self, request: stn_pb2.PredictRequest, context, call: Call, inline: bool):
        """Validate, decode and queue one request (or, with `inline`, run it here if the model
        is idle); returns a function that waits for its outputs and builds the response."""
        model = self.repository.get(request.model, request.version)
        call.model = model.name
        if request.top_k < 0:
            raise InvalidInputError(
                f"top_k must be >= 0 (0 = {DEFAULT_TOP_K}), got {request.top_k}"
            )
        top_k = min(request.top_k or DEFAULT_TOP_K, model.spec.num_classes)
        with self.dispatcher.arrival(model, context, inline) as submit:
            shape = model.spec.input_shape
            future = submit(request_images(request.images, shape, self.max_images))
        return lambda: response_for(
            request, model, top_k, self.dispatcher.result(model, future, context)
        )

    def Predict(self, request, context):
        with answering(context, self.metrics, "Predict") as call:
            return self._start(request, context, call, inline=True)()

    def PredictStream(self, request_iterator, context):
        """Requests are queued as they arrive, so those in flight on one stream can share a batch;
        responses keep the request order. A bad request ends the stream with its status."""

        def start(request, call):
            # Never inline: the reader must keep reading while the model runs.
            return self._start(request, context, call, inline=False)

        for call, finish in started_in_order(request_iterator, context, start, stop_at_error=True):
            with answering(context, self.metrics, "PredictStream", call):
                response = finish()
            yield response

    def ListModels(self, request, context):
        with answering(context, self.metrics, "ListModels"):
            return stn_pb2.ListModelsResponse(
                models=[
                    describe(self.repository.get(name), self.repository.versions(name))
                    for name in self.repository.names()
                ]
            )

    def DescribeModel(self, request, context):
        with answering(context, self.metrics, "DescribeModel") as call:
            model = self.repository.get(request.model, request.version)
            call.model = model.name
            return describe(model, self.repository.versions(model.name))
