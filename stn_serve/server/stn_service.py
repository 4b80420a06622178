"""`stn.v1.StnService`: converts between stn.v1 messages and arrays (`StnCodec`); the request
path (`stn_serve.server.request_path`) does the rest."""

from __future__ import annotations

import asyncio
import weakref

import grpc
import numpy as np

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.contract import DEFAULT_TOP_K
from stn_serve.errors import InvalidInputError, NotFoundError, NotReadyError
from stn_serve.imaging import DecodeControl, decode_encoded, encode_png
from stn_serve.runtime import State
from stn_serve.server.images import check_count, decode_raw
from stn_serve.server.predict_wire import ResponseLayout, response_bytes
from stn_serve.server.status import Call, answered, deadline_of
from stn_serve.server.streams import answer_stream

DTYPES = {stn_pb2.DATA_TYPE_UINT8: "uint8", stn_pb2.DATA_TYPE_FLOAT32: "float32"}


def image_array(
    image: stn_pb2.Image,
    shape: tuple[int, int, int],
    index: int,
    control: DecodeControl | None = None,
) -> np.ndarray:
    """One image of a request -> float32[C, H, W] in [0, 1]; errors name it as images[index].
    Encoded images decode within `control`'s limits (see `stn_serve.imaging.decode_encoded`)."""
    what = f"images[{index}]"
    source = image.WhichOneof("source")
    if source == "encoded":
        return decode_encoded(image.encoded, shape, what, control)
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
    if not all(image.HasField("tensor") for image in images):
        return None
    tensors = [image.tensor for image in images]
    first = tensors[0]
    dtype, dims = first.dtype, first.shape
    if dtype not in DTYPES:
        return None
    if len(tensors) > 1 and not all(t.dtype == dtype and t.shape == dims for t in tensors):
        return None
    parts = [tensor.data for tensor in tensors]
    size = len(parts[0])
    if len(parts) > 1 and not all(len(part) == size for part in parts):
        return None
    try:
        return decode_raw(
            b"".join(parts), list(dims), DTYPES[dtype], shape, "images", count=len(parts)
        )
    except InvalidInputError:
        return None


def request_images(
    images, shape: tuple[int, int, int], control: DecodeControl | None = None
) -> np.ndarray:
    """A request's images -> float32[N, C, H, W] in [0, 1]; each error names the image."""
    batch = _same_raw_tensors(images, shape)
    if batch is not None:
        return batch
    return one_by_one(images, shape, control)


def one_by_one(images, shape: tuple[int, int, int], control: DecodeControl | None = None):
    """Each image on its own (`image_array`), stacked -> float32[N, C, H, W]."""
    return np.stack([image_array(image, shape, i, control) for i, image in enumerate(images)])


STATES = {
    State.LOADING: stn_pb2.VERSION_STATE_LOADING,
    State.READY: stn_pb2.VERSION_STATE_READY,
    State.UNLOADING: stn_pb2.VERSION_STATE_UNLOADING,
    State.UNAVAILABLE: stn_pb2.VERSION_STATE_UNAVAILABLE,
}


def version_states(repository, name: str) -> list[stn_pb2.VersionStatus]:
    """The state of every version of model `name` the repository knows."""
    return [
        stn_pb2.VersionStatus(
            version=status.version, state=STATES[status.state], reason=status.reason
        )
        for status in repository.status(name)
    ]


def describe(model, repository) -> stn_pb2.ModelDescription:
    """A ready model version, with the ready versions and the states of every version."""
    spec = model.spec
    return stn_pb2.ModelDescription(
        name=spec.name,
        version=spec.version,
        versions=repository.versions(spec.name),
        labels=spec.labels,
        input_shape=spec.input_shape,
        crop_shape=spec.crop_shape,
        transform=spec.transform,
        num_params=spec.num_params,
        execution_provider=model.provider or "",
        ready=model.ready,
        version_states=version_states(repository, spec.name),
    )


def list_models(repository) -> stn_pb2.ListModelsResponse:
    """Every model in the repository: those with a ready version described by the newest, the
    others by their name and version states alone. Lists the repository's folder."""
    found = []
    for name in repository.model_names():
        try:
            found.append(describe(repository.get(name), repository))
        except (NotFoundError, NotReadyError):
            found.append(
                stn_pb2.ModelDescription(name=name, version_states=version_states(repository, name))
            )
    return stn_pb2.ListModelsResponse(models=found)


def response_for(request, model, top_k: int, outputs: dict[str, np.ndarray], layout=None) -> bytes:
    """The batch's outputs ({probabilities [N, K], crop [N, C, h, w], theta [N, P]}) as a
    serialised PredictResponse (`predict_wire`; `layout` is the model's, made here if None).
    Sorting and the conversions happen once for the whole request, none per field."""
    probabilities, crops = outputs["probabilities"], outputs["crop"]
    if top_k == 1:  # the usual case: no sort
        order = probabilities.argmax(axis=1)[:, None]
        top = probabilities.max(axis=1, keepdims=True)
    else:
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        top = probabilities[np.arange(len(order))[:, None], order]
    pngs = [encode_png(crop) for crop in crops] if request.crop_png else None
    if layout is None or layout.crop_shape != crops.shape[1:]:
        layout = ResponseLayout(model.spec.labels, crops.shape[1:], model.spec.num_params)
    predictions = layout.predictions(order, top, crops, outputs["theta"], pngs)
    return response_bytes(model.name, model.version, request.request_id, predictions)


def serialized(response) -> bytes:
    """A response for gRPC: bytes as they are (`response_for` writes them), a message
    serialised."""
    return response if type(response) is bytes else response.SerializeToString()


def add_stn_service(servicer: StnServicer, server) -> None:
    """Register `servicer` on `server` as the generated `add_StnServiceServicer_to_server`
    does, with Predict's and PredictStream's answers passed through `serialized`."""
    handlers = {
        "Predict": grpc.unary_unary_rpc_method_handler(
            servicer.Predict,
            request_deserializer=stn_pb2.PredictRequest.FromString,
            response_serializer=serialized,
        ),
        "PredictStream": grpc.stream_stream_rpc_method_handler(
            servicer.PredictStream,
            request_deserializer=stn_pb2.PredictRequest.FromString,
            response_serializer=serialized,
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=stn_pb2.ListModelsRequest.FromString,
            response_serializer=stn_pb2.ListModelsResponse.SerializeToString,
        ),
        "DescribeModel": grpc.unary_unary_rpc_method_handler(
            servicer.DescribeModel,
            request_deserializer=stn_pb2.DescribeModelRequest.FromString,
            response_serializer=stn_pb2.ModelDescription.SerializeToString,
        ),
    }
    name = stn_pb2.DESCRIPTOR.services_by_name["StnService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class StnCodec:
    """stn.v1 messages <-> arrays, for the request path (`request_path.Codec`)."""

    def __init__(self, max_images_per_request: int):
        self.max_images = max_images_per_request
        # Each model version's response layout, made on its first answer; gone with the model.
        self._layouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def target(self, request: stn_pb2.PredictRequest) -> tuple[str, int]:
        return request.model, request.version

    def settings(self, request: stn_pb2.PredictRequest, model) -> int:
        """The request's top_k, capped at the model's classes."""
        check_count(len(request.images), self.max_images)
        if request.top_k < 0:
            raise InvalidInputError(
                f"top_k must be >= 0 (0 = {DEFAULT_TOP_K}), got {request.top_k}"
            )
        return min(request.top_k or DEFAULT_TOP_K, model.spec.num_classes)

    def raw_images(self, request: stn_pb2.PredictRequest, shape) -> np.ndarray | None:
        images = request.images
        batch = _same_raw_tensors(images, shape)
        if batch is not None or any(i.WhichOneof("source") == "encoded" for i in images):
            return batch
        return one_by_one(images, shape)  # raw tensors that differ, or one at fault

    def images(self, request, shape, control: DecodeControl) -> np.ndarray:
        return request_images(request.images, shape, control)

    def response(self, request, model, top_k: int, outputs) -> bytes:
        layout = self._layouts.get(model)
        if layout is None:
            spec = model.spec
            layout = ResponseLayout(spec.labels, spec.crop_shape, spec.num_params)
            self._layouts[model] = layout
        return response_for(request, model, top_k, outputs, layout)


class StnServicer(stn_pb2_grpc.StnServiceServicer):
    def __init__(self, path, metrics, max_images_per_request: int, stream_limits):
        self.path = path
        self.metrics = metrics
        self.codec = StnCodec(max_images_per_request)
        self.stream_limits = stream_limits

    async def Predict(self, request, context):
        return await answered(
            context,
            self.metrics,
            "Predict",
            lambda call: self.path.answer(self.codec, request, call),
        )

    async def PredictStream(self, request_iterator, context):
        """Requests are started as they arrive, so those in flight on one stream can share a
        batch; responses keep the request order. A bad request ends the stream with its status."""

        def start(request):
            call = Call(deadline_of(context))
            return call, asyncio.ensure_future(self.path.answer(self.codec, request, call))

        async def finish(call, task):
            return await answered(context, self.metrics, "PredictStream", lambda _: task, call)

        await answer_stream(context, start, finish, self.stream_limits)

    async def ListModels(self, request, context):
        async def models(call):
            return await asyncio.to_thread(list_models, self.path.repository)

        return await answered(context, self.metrics, "ListModels", models)

    async def DescribeModel(self, request, context):
        async def description(call):
            model = self.path.model(request.model, request.version)
            call.model = model.name
            return describe(model, self.path.repository)

        return await answered(context, self.metrics, "DescribeModel", description)
