"""`Client`: predict, stream, list and describe models on an stn-serve server."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import numpy as np

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.client.channel import open_channels
from stn_serve.client.defaults import DEFAULT_MAX_MESSAGE_MB, DEFAULT_TIMEOUT_S
from stn_serve.client.images import to_images
from stn_serve.client.results import ClassScore, ModelInfo, Prediction, VersionState
from stn_serve.client.status import error_from_rpc
from stn_serve.client.tensors import from_tensor
from stn_serve.contract import DEFAULT_TOP_K
from stn_serve.errors import InvalidInputError, NotReadyError, StnServeError


class Client:
    """A connection to one stn-serve endpoint.

    Args:
        target: `host:port`, or `dns:///host:port` for a name that resolves to many servers
            (a headless Service); requests are balanced round-robin over every address.
        model: default model name; "" lets a server that holds exactly one model pick it.
        version: default model version; 0 = the newest loaded.
        timeout: default deadline in seconds for each unary call (None = no deadline).
        max_message_mb: the largest request or response the channel accepts.
        tls: connect with TLS, trusting the system's CA certificates (implied by `tls_ca`).
        tls_ca: PEM file of the CA that signed the server's certificate.
        tls_cert, tls_key: PEM client certificate and key, for a server requiring mutual TLS.
        token: bearer token sent with every call (`authorization: Bearer <token>`).
        channels: connections to spread the calls over, in turn. A server of several processes
            on one port (`stn-serve serve --processes N`) shares the work by connection, so a
            busy client uses about N (or more) to reach every process.

    Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        target: str,
        *,
        model: str = "",
        version: int = 0,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
        tls: bool = False,
        tls_ca=None,
        tls_cert=None,
        tls_key=None,
        token: str | None = None,
        channels: int = 1,
    ):
        if channels < 1:
            raise InvalidInputError(f"channels must be at least 1, got {channels}")
        self.target = target
        self.model = model
        self.version = version
        self.timeout = timeout
        self._channels = open_channels(
            target,
            channels,
            max_message_mb=max_message_mb,
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=token,
        )
        self._stubs = itertools.cycle(
            [stn_pb2_grpc.StnServiceStub(channel) for channel in self._channels]
        )
        self._request_ids = itertools.count()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until every channel connects; raise NotReadyError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        try:
            for channel in self._channels:
                remaining = max(0.0, deadline - time.monotonic())
                grpc.channel_ready_future(channel).result(timeout=remaining)
        except grpc.FutureTimeoutError:
            raise NotReadyError(f"{self.target}: no connection within {timeout} s") from None

    def _stub(self) -> stn_pb2_grpc.StnServiceStub:
        """The next channel's stub, in turn."""
        return next(self._stubs)

    def _request(
        self, images: Any, model: str | None, version: int | None, top_k: int
    ) -> stn_pb2.PredictRequest:
        return stn_pb2.PredictRequest(
            model=self.model if model is None else model,
            version=self.version if version is None else version,
            images=to_images(images),
            top_k=top_k,
            request_id=str(next(self._request_ids)),
        )

    def predict(
        self,
        images: Any,
        *,
        model: str | None = None,
        version: int | None = None,
        top_k: int = DEFAULT_TOP_K,
        timeout: float | None = None,
    ) -> list[Prediction]:
        """Predict one or many images with one model; results keep the input's order.

        Args:
            images: a path, PNG/JPEG bytes, a PIL image or an array ([C, H, W] or [H, W], uint8
                or float32 in [0, 1]); an iterable of those; or an array [N, C, H, W].
            model, version: default the client's.
            top_k: how many classes to return per image (capped at the number of classes).
            timeout: deadline in seconds for this call (default: the client's).
        """
        request = self._request(images, model, version, top_k)
        return predictions_from(self._unary(self._stub().Predict, request, timeout))

    def predict_stream(
        self,
        batches: Iterable[Any],
        *,
        model: str | None = None,
        version: int | None = None,
        top_k: int = DEFAULT_TOP_K,
        timeout: float | None = None,
    ) -> Iterator[list[Prediction]]:
        """Send each element of `batches` (anything `predict` takes) as one request on a single
        stream, and yield each answer in order. `batches` is consumed lazily, so it may be a
        generator of unbounded length; `timeout` bounds the whole stream (default: none).

        An element that cannot be converted ends the stream: the answers to the elements before
        it are yielded, then its error is raised.
        """
        refused: list[StnServeError] = []

        def requests():
            # gRPC iterates this on a thread of its own, where an exception would only cancel
            # the call; keep the error to raise here instead.
            for images in batches:
                try:
                    yield self._request(images, model, version, top_k)
                except StnServeError as error:
                    refused.append(error)
                    return

        responses = self._stub().PredictStream(requests(), timeout=timeout)
        try:
            for response in responses:
                yield predictions_from(response)
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.target) from error
        finally:
            responses.cancel()
        if refused:
            raise refused[0]

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model in the server's repository: the newest ready version of each, or for a
        model with none ready its name and version states."""
        response = self._unary(self._stub().ListModels, stn_pb2.ListModelsRequest(), timeout)
        return [model_info_from(description) for description in response.models]

    def describe(
        self, model: str | None = None, version: int | None = None, *, timeout: float | None = None
    ) -> ModelInfo:
        """One model version: labels, input and crop shapes, transform, execution provider."""
        request = stn_pb2.DescribeModelRequest(
            model=self.model if model is None else model,
            version=self.version if version is None else version,
        )
        return model_info_from(self._unary(self._stub().DescribeModel, request, timeout))

    def _unary(self, method, request, timeout: float | None):
        """Call a unary `method` under `timeout` (default: the client's); RPC errors become the
        project's errors."""
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.target) from error


def predictions_from(response: stn_pb2.PredictResponse) -> list[Prediction]:
    return [
        Prediction(
            top_k=[
                ClassScore(index=score.index, label=score.label, probability=score.probability)
                for score in prediction.top_k
            ],
            crop=from_tensor(prediction.crop)
            if prediction.HasField("crop")
            else np.zeros((0,), np.float32),
            theta=np.asarray(prediction.theta, dtype=np.float32),
            model=response.model,
            version=response.version,
        )
        for prediction in response.predictions
    ]


def model_info_from(description: stn_pb2.ModelDescription) -> ModelInfo:
    return ModelInfo(
        name=description.name,
        version=description.version,
        versions=list(description.versions),
        labels=list(description.labels),
        input_shape=tuple(description.input_shape),
        crop_shape=tuple(description.crop_shape),
        transform=description.transform,
        num_params=description.num_params,
        execution_provider=description.execution_provider,
        ready=description.ready,
        states=[
            VersionState(
                version=status.version,
                state=stn_pb2.VersionState.Name(status.state).removeprefix("VERSION_STATE_"),
                reason=status.reason,
            )
            for status in description.version_states
        ],
    )
