"""One path for every inference request of both protocols, from a message to its answer.

Each protocol's servicer supplies a `Codec` that only converts its messages: where the request
points (model, version), the checks that need no decoding, its images as an array, and the
response for the model's outputs. `RequestPath` does the rest the same way for both: takes a
lease on the model version from the repository at request time (a version being unloaded waits
for the requests that hold it), admits the request (overall and per-model bounds), decodes its
images (in the decode pool when they are encoded), queues it for a batch and waits for its
outputs, all under the RPC's deadline; a cancelled RPC stops wherever it is.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stn_serve.contract.layout import NAME_PATTERN
from stn_serve.errors import NotFoundError
from stn_serve.imaging import DecodeControl
from stn_serve.runtime import OnnxModel
from stn_serve.server.status import Call, clip


class Codec(Protocol):
    def target(self, request) -> tuple[str, int]:
        """(model name, version; 0 = the newest)."""

    def settings(self, request, model: OnnxModel):
        """Check what needs no decoding (raising InvalidInputError); returns what `response`
        needs besides the outputs."""

    def raw_images(self, request, shape: tuple[int, int, int]) -> np.ndarray | None:
        """The request's images as float32[N, C, H, W] in [0, 1] when they take no decoding
        (raw tensors: a copy and a range check, done at once); None when they must go to the
        decode pool (`images`)."""

    def images(self, request, shape: tuple[int, int, int], control: DecodeControl) -> np.ndarray:
        """The request's images as float32[N, C, H, W] in [0, 1], decoded within `control`."""

    def response(self, request, model: OnnxModel, settings, outputs: dict[str, np.ndarray]):
        """The answer for the model's outputs ({name: [N, ...]})."""


class RequestPath:
    def __init__(self, repository, admission, dispatcher, decoder, statistics):
        self.repository = repository
        self.admission = admission
        self.dispatcher = dispatcher
        self.decoder = decoder
        self.statistics = statistics  # the Open Inference Protocol's per-version statistics
        # Names of models served so far: known good, so not matched against the pattern again.
        # Bounded by the models the repository held, whatever clients send.
        self._served_names: set[str] = set()

    def _named(self, name: str) -> str:
        """`name` if a model may have it; a name no model can have is refused without being
        echoed in full."""
        if name and name not in self._served_names and not NAME_PATTERN.fullmatch(name):
            raise NotFoundError(
                f"unknown model {clip(name)}; loaded models: {self.repository.names()}"
            )
        return name

    def model(self, name: str, version: int = 0) -> OnnxModel:
        """The ready model a client names (0 = the newest version), for its description."""
        return self.repository.get(self._named(name), version)

    async def answer(self, codec: Codec, request, call: Call):
        """The response to one request (`call` records its model; its deadline bounds it)."""
        name, version = codec.target(request)
        with self.repository.acquire(self._named(name), version) as model:
            call.model = model.name
            self._served_names.add(model.name)
            with self.statistics.request(model):
                settings = codec.settings(request, model)
                outputs = await self._outputs(codec, request, model, call)
        return codec.response(request, model, settings, outputs)

    async def _outputs(self, codec: Codec, request, model: OnnxModel, call: Call):
        """The model's outputs for the request's images, once admitted."""
        self.admission.admit(model.name)
        try:
            batcher = self.dispatcher.batcher(model)
            shape = model.spec.input_shape
            images = codec.raw_images(request, shape)
            if images is None:
                with batcher.arriving():
                    images = await self.decoder.decode(codec, request, shape, call.deadline)
            return await batcher.run(images, call.deadline)
        finally:
            self.admission.release(model.name)
