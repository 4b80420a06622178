"""`inference.GRPCInferenceService` (Open Inference Protocol / KServe v2, as Triton serves it):
converts between its messages and arrays; the runtime does the rest."""

from __future__ import annotations

import math

import numpy as np

import stn_serve
from stn_serve._proto.inference import grpc_service_pb2 as pb
from stn_serve._proto.inference import grpc_service_pb2_grpc
from stn_serve.contract import INPUT_NAME, OUTPUT_NAMES, parse_version
from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.server.images import check_count, check_pixels
from stn_serve.server.status import Call, answering, counted
from stn_serve.server.streams import started_in_order

SERVER_NAME = "stn-serve"
PLATFORM = "onnxruntime_onnx"


def requested_version(version: str) -> int:
    """The protocol's string version -> int (empty = 0 = the newest loaded)."""
    if not version:
        return 0
    number = parse_version(version)
    if number is None:
        raise InvalidInputError(
            f"model version must be a positive integer, got {version[:64]!r}"
        )
    return number


def input_images(
    request: pb.ModelInferRequest, shape: tuple[int, int, int], max_images: int
) -> np.ndarray:
    """The request's one input `image` (FP32 [N, C, H, W], raw or typed contents) as an array."""
    names = [tensor.name for tensor in request.inputs]
    if names != [INPUT_NAME]:
        raise InvalidInputError(f"expected exactly one input named {INPUT_NAME!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInputError(
            f"input {INPUT_NAME!r} has datatype {tensor.datatype!r}; expected 'FP32'"
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
        raise InvalidInputError(f"unknown outputs {unknown}; the model has {list(OUTPUT_NAMES)}")
    return names


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository, dispatcher, metrics, max_images_per_request: int, state):
        self.repository = repository
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.max_images = max_images_per_request
        self.state = state  # has `.serving`: False once shutdown begins

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.state.serving and self.repository.ready)

    def ModelReady(self, request, context):
        with answering(context, self.metrics, "ModelReady") as call:
            try:
                model = self.repository.get(request.name, requested_version(request.version))
            except NotFoundError:
                return pb.ModelReadyResponse(ready=False)
            call.model = model.name
            return pb.ModelReadyResponse(ready=self.state.serving and model.ready)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=stn_serve.__version__)

    def ModelMetadata(self, request, context):
        with answering(context, self.metrics, "ModelMetadata") as call:
            model = self.repository.get(request.name, requested_version(request.version))
            call.model = model.name
            spec = model.spec
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=spec.name,
                versions=[str(v) for v in self.repository.versions(spec.name)],
                platform=PLATFORM,
                inputs=[tensor(name=INPUT_NAME, datatype="FP32", shape=[-1, *spec.input_shape])],
                outputs=[
                    tensor(name=name, datatype="FP32", shape=[-1, *spec.output_shapes[name]])
                    for name in OUTPUT_NAMES
                ],
            )

    def _start(self, request: pb.ModelInferRequest, context, call: Call, inline: bool):
        """Validate, decode and queue one request (or, with `inline`, run it here if the model
        is idle); returns a function that waits for its outputs and builds the response."""
        model = self.repository.get(request.model_name, requested_version(request.model_version))
        call.model = model.name
        names = requested_outputs(request)
        with self.dispatcher.arrival(model, context, inline) as submit:
            future = submit(input_images(request, model.spec.input_shape, self.max_images))

        def finish() -> pb.ModelInferResponse:
            outputs = self.dispatcher.result(model, future, context)
            response = pb.ModelInferResponse(
                model_name=model.name, model_version=str(model.version), id=request.id
            )
            for name in names:
                value = np.ascontiguousarray(outputs[name], "<f4")
                response.outputs.add(name=name, datatype="FP32", shape=value.shape)
                response.raw_output_contents.append(value.tobytes())
            return response

        return finish

    def ModelInfer(self, request, context):
        with answering(context, self.metrics, "ModelInfer") as call:
            return self._start(request, context, call, inline=True)()

    def ModelStreamInfer(self, request_iterator, context):
        """As Triton does: one response per request, in request order, and a request that fails
        is answered with its error_message while the stream goes on."""

        def start(request, call):
            # Never inline: the reader must keep reading while the model runs.
            return self._start(request, context, call, inline=False)

        for call, finish in started_in_order(request_iterator, context, start, stop_at_error=False):
            try:
                with counted(self.metrics, "ModelStreamInfer", call):
                    response = finish()
            except Exception:  # noqa: BLE001 - counted and logged; answered in-band below
                yield pb.ModelStreamInferResponse(
                    error_message=f"[{call.code.name}] {call.message}"
                )
            else:
                yield pb.ModelStreamInferResponse(infer_response=response)
