"""`inference.GRPCInferenceService` (Open Inference Protocol / KServe v2, as Triton serves it):
converts between its messages and arrays (`InferenceCodec`); the request path
(`stn_serve.server.request_path`) does the rest. The model repository extension, ModelConfig
and ModelStatistics are answered by `stn_serve.server.repository_service`."""

from __future__ import annotations

import asyncio
import math

import numpy as np

import stn_serve
from stn_serve._proto.inference import grpc_service_pb2 as pb
from stn_serve._proto.inference import grpc_service_pb2_grpc
from stn_serve.contract import INPUT_NAME, OUTPUT_NAMES, parse_version
from stn_serve.errors import InvalidInputError, NotFoundError, NotReadyError
from stn_serve.server.images import check_count, check_pixels
from stn_serve.server.status import Call, answered, clip, counted, deadline_of
from stn_serve.server.streams import answer_stream

SERVER_NAME = "stn-serve"
PLATFORM = "onnxruntime_onnx"


def requested_version(version: str) -> int:
    """The protocol's string version -> int (empty = 0 = the newest loaded)."""
    if not version:
        return 0
    number = parse_version(version)
    if number is None:
        raise InvalidInputError(f"model version must be a positive integer, got {clip(version)}")
    return number


def input_images(
    request: pb.ModelInferRequest, shape: tuple[int, int, int], max_images: int
) -> np.ndarray:
    """The request's one input `image` (FP32 [N, C, H, W], raw or typed contents) as an array."""
    names = [tensor.name for tensor in request.inputs]
    if names != [INPUT_NAME]:
        raise InvalidInputError(
            f"expected exactly one input named {INPUT_NAME!r}, got {quoted(names)}"
        )
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInputError(
            f"input {INPUT_NAME!r} has datatype {clip(tensor.datatype)}; expected 'FP32'"
        )
    dims = list(tensor.shape)
    if len(dims) != 4 or tuple(dims[1:]) != shape:
        raise InvalidInputError(
            f"input {INPUT_NAME!r} has shape {dims}; expected [N, {', '.join(map(str, shape))}]"
        )
    check_count(dims[0], max_images)
    count = math.prod(dims)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInputError(
                f"raw_input_contents has {len(request.raw_input_contents)} entries; expected 1 (one per input)"
            )
        if tensor.HasField("contents"):
            raise InvalidInputError(
                "input 'image' sets both contents and raw_input_contents; send one"
            )
        data = request.raw_input_contents[0]
        if len(data) != count * 4:
            raise InvalidInputError(
                f"raw_input_contents[0] has {len(data)} bytes; FP32 {dims} needs {count * 4}"
            )
        array = np.frombuffer(data, "<f4")
    else:
        values = tensor.contents.fp32_contents
        if len(values) != count:
            raise InvalidInputError(
                f"input {INPUT_NAME!r} has {len(values)} fp32_contents; shape {dims} needs {count}"
            )
        array = np.asarray(values, np.float32)
    return check_pixels(array.reshape(dims), f"input {INPUT_NAME!r}")


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    names = [output.name for output in request.outputs] or list(OUTPUT_NAMES)
    unknown = [name for name in names if name not in OUTPUT_NAMES]
    if unknown:
        raise InvalidInputError(
            f"unknown outputs {quoted(unknown)}; the model has {list(OUTPUT_NAMES)}"
        )
    return names


def quoted(names: list[str], most: int = 4) -> str:
    """Client-supplied names for a message: each cut, and at most `most` of them."""
    shown = ", ".join(clip(name) for name in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}] ({len(names)} in all)"


class InferenceCodec:
    """Open Inference Protocol messages <-> arrays, for the request path (`request_path.Codec`)."""

    def __init__(self, max_images_per_request: int):
        self.max_images = max_images_per_request

    def target(self, request: pb.ModelInferRequest) -> tuple[str, int]:
        return request.model_name, requested_version(request.model_version)

    def settings(self, request: pb.ModelInferRequest, model) -> list[str]:
        """The outputs to answer with."""
        return requested_outputs(request)

    def raw_images(self, request: pb.ModelInferRequest, shape) -> np.ndarray:
        return input_images(request, shape, self.max_images)  # raw FP32 tensors only

    def images(self, request, shape, control) -> np.ndarray:
        return self.raw_images(request, shape)

    def response(self, request, model, names: list[str], outputs) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=str(model.version), id=request.id
        )
        for name in names:
            value = np.ascontiguousarray(outputs[name], "<f4")
            response.outputs.add(name=name, datatype="FP32", shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response


def _repository_rpc(method: str, handler: str, blocking: bool = False):
    """An RPC of the servicer answered by its `repository_service.<handler>(request)` under
    the status mapping of every RPC. Loading, unloading (which drains) and listing the folder
    block: they run in a thread (`blocking`), so that the event loop goes on serving, the
    requests being drained included."""

    async def rpc(self, request, context):
        answer = getattr(self.repository_service, handler)

        async def work(call):
            return await asyncio.to_thread(answer, request) if blocking else answer(request)

        return await answered(context, self.metrics, method, work)

    rpc.__name__ = method
    return rpc


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, path, metrics, max_images_per_request: int, stream_limits, state, repository_service
    ):
        self.path = path
        self.metrics = metrics
        self.codec = InferenceCodec(max_images_per_request)
        self.stream_limits = stream_limits
        self.state = state  # has `.serving`: False once shutdown begins
        self.repository_service = repository_service

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        """Ready while serving with a model ready; in explicit model control, which may start
        with none loaded (as Triton's), while serving."""
        explicit = self.repository_service.control.mode == "explicit"
        ready = self.state.serving and (explicit or self.path.repository.ready)
        return pb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request, context):
        async def readiness(call):
            try:
                model = self.path.model(request.name, requested_version(request.version))
            except (NotFoundError, NotReadyError):  # unknown, loading or draining
                return pb.ModelReadyResponse(ready=False)
            call.model = model.name
            return pb.ModelReadyResponse(ready=self.state.serving and model.ready)

        return await answered(context, self.metrics, "ModelReady", readiness)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=stn_serve.__version__)

    async def ModelMetadata(self, request, context):
        async def metadata(call):
            model = self.path.model(request.name, requested_version(request.version))
            call.model = model.name
            spec = model.spec
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=spec.name,
                versions=[str(v) for v in self.path.repository.versions(spec.name)],
                platform=PLATFORM,
                inputs=[tensor(name=INPUT_NAME, datatype="FP32", shape=[-1, *spec.input_shape])],
                outputs=[
                    tensor(name=name, datatype="FP32", shape=[-1, *spec.output_shapes[name]])
                    for name in OUTPUT_NAMES
                ],
            )

        return await answered(context, self.metrics, "ModelMetadata", metadata)

    async def ModelInfer(self, request, context):
        return await answered(
            context,
            self.metrics,
            "ModelInfer",
            lambda call: self.path.answer(self.codec, request, call),
        )

    async def ModelStreamInfer(self, request_iterator, context):
        """As Triton does: one response per request, in request order, and a request that fails
        is answered with its error_message while the stream goes on."""

        def start(request):
            call = Call(deadline_of(context))
            return call, asyncio.ensure_future(self.path.answer(self.codec, request, call))

        async def finish(call, task):
            try:
                with counted(self.metrics, "ModelStreamInfer", call):
                    response = await task
            except Exception:  # noqa: BLE001 - counted and logged; answered in-band
                return pb.ModelStreamInferResponse(
                    error_message=f"[{call.code.name}] {call.message}"
                )
            return pb.ModelStreamInferResponse(infer_response=response)

        await answer_stream(context, start, finish, self.stream_limits)

    # The repository extension, ModelConfig and ModelStatistics, answered by RepositoryService.
    RepositoryIndex = _repository_rpc("RepositoryIndex", "repository_index", blocking=True)
    RepositoryModelLoad = _repository_rpc("RepositoryModelLoad", "load", blocking=True)
    RepositoryModelUnload = _repository_rpc("RepositoryModelUnload", "unload", blocking=True)
    ModelConfig = _repository_rpc("ModelConfig", "model_config")
    ModelStatistics = _repository_rpc("ModelStatistics", "model_statistics")
