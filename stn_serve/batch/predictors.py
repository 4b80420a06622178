"""The two ways a batch job predicts a chunk of encoded images: a remote server, or an ONNX
Runtime session in this process. Both return the client's `Prediction` per image and a `Failure`
for each image that could not be predicted, so one bad file never sinks its chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stn_serve.batch.inputs import InputFile
from stn_serve.client import Client, Prediction
from stn_serve.client.results import ClassScore
from stn_serve.errors import InvalidInputError, ResourceExhaustedError, StnServeError
from stn_serve.imaging import decode_encoded


@dataclass(frozen=True)
class Failure:
    """An input that could not be predicted, and why."""

    file: str
    error: str


Encoded = tuple[InputFile, bytes]
Outcome = tuple[list[tuple[InputFile, Prediction]], list[Failure]]


class Predictor(Protocol):
    def predict(self, chunk: list[Encoded]) -> Outcome: ...

    def close(self) -> None: ...


class RemotePredictor:
    """Sends each chunk as one Predict request. When the server refuses a chunk as invalid (some
    file in it does not decode) or too large (over its message or image limits), the chunk's
    files are sent one by one, so only the files at fault fail, each named by its path."""

    def __init__(self, client: Client, top_k: int):
        self.client = client
        self.top_k = top_k

    def predict(self, chunk: list[Encoded]) -> Outcome:
        try:
            predictions = self.client.predict([data for _, data in chunk], top_k=self.top_k)
            return list(zip((file for file, _ in chunk), predictions)), []
        except (InvalidInputError, ResourceExhaustedError) as error:
            if len(chunk) == 1:
                return [], [_refused(chunk[0][0], error)]
        done, failed = [], []
        for file, data in chunk:
            try:
                (prediction,) = self.client.predict([data], top_k=self.top_k)
                done.append((file, prediction))
            except StnServeError as error:
                failed.append(_refused(file, error))
        return done, failed

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RemotePredictor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _refused(file: InputFile, error: StnServeError) -> Failure:
    """The failure of a file sent on its own: the server names it `images[0]`, the user knows
    it by its path."""
    return Failure(file.key, str(error).replace("images[0]", str(file.path)))


class LocalPredictor:
    """Decodes images in this process, as the server does, and runs one model version
    (`stn_serve.runtime.OnnxModel`) on ONNX Runtime."""

    def __init__(self, model, top_k: int):
        self.model = model
        self.top_k = top_k

    def predict(self, chunk: list[Encoded]) -> Outcome:
        decoded, failed = [], []
        shape = self.model.spec.input_shape
        for file, data in chunk:
            try:
                decoded.append((file, decode_encoded(data, shape, str(file.path))))
            except StnServeError as error:
                failed.append(Failure(file.key, str(error)))
        if not decoded:
            return [], failed
        outputs = self.model.predict(np.stack([image for _, image in decoded]))
        return [
            (file, self._prediction(outputs, row)) for row, (file, _) in enumerate(decoded)
        ], failed

    def _prediction(self, outputs: dict[str, np.ndarray], row: int) -> Prediction:
        probabilities = outputs["probabilities"][row]
        k = min(self.top_k, probabilities.shape[0])
        best = np.argsort(-probabilities, kind="stable")[:k]
        labels = self.model.spec.labels
        return Prediction(
            top_k=[ClassScore(int(i), labels[i], float(probabilities[i])) for i in best],
            crop=outputs["crop"][row],
            theta=outputs["theta"][row],
            model=self.model.name,
            version=self.model.version,
        )

    def close(self) -> None:
        self.model.unload()
