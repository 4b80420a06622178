"""`stn.v1.PredictResponse` written straight in protobuf's wire format, from the batch's arrays.

Filling a PredictResponse message field by field costs a few Python calls per image and per
class score, then a serialisation that copies everything once more; for a request of 64 images
that is more than the rest of the request path. Here the bytes are laid out at once: every
prediction of a response has the same layout (the crop and theta have the model's sizes, and the
top-k scores of a class have a fixed encoding), so the predictions are the rows of one uint8
array filled column block by column block with numpy. Where the rows differ in length (labels of
different byte lengths, or PNG crops asked for) each prediction is joined on its own.

The result parses to the same message `PredictResponse` would hold (tests/test_server_wire.py
holds that); the servicer hands the bytes to gRPC as they are (see `stn_service.serialized`).
Field keys follow https://protobuf.dev/programming-guides/encoding/: (number << 3) | wire type,
0 = varint, 2 = length-delimited, 5 = 32-bit.
"""

from __future__ import annotations

import numpy as np

from stn_serve._proto.stn.v1 import stn_pb2

# PredictResponse: model = 1, version = 2, predictions = 3, request_id = 4.
# Prediction: top_k = 1, crop = 2, crop_png = 3, theta = 4 (packed floats).
# ClassScore: index = 1, label = 2, probability = 3 (float). Tensor: shape = 1 (packed), dtype = 2,
# data = 3.
_PREDICTION = b"\x1a"
_TOP_K = b"\x0a"
_PROBABILITY = b"\x1d"
#: Predictions in a response from which filling one uint8 array beats joining bytes per image
#: (numpy's calls cost more than a few joins until then).
ROWS_FROM = 8


def varint(value: int) -> bytes:
    """`value` as a protobuf varint (negative int64 values as their 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its key, the payload's length, the payload."""
    return key + varint(len(payload)) + payload


class ResponseLayout:
    """The fixed parts of one model version's PredictResponse: each class score's bytes up to
    its probability, the crop tensor's header and theta's header."""

    def __init__(self, labels: list[str], crop_shape: tuple[int, ...], num_params: int):
        self.crop_shape = tuple(crop_shape)
        self.crop_bytes = 4 * int(np.prod(crop_shape))
        self.theta_bytes = 4 * num_params
        # Each score: key and length of the ClassScore, its index (0 written out too, so that
        # every score of a class has one length), its label, the probability's key.
        self.scores = []
        for index, label in enumerate(labels):
            body = b"\x08" + varint(index) + delimited(b"\x12", label.encode())
            self.scores.append(_TOP_K + varint(len(body) + 5) + body + _PROBABILITY)
        shape = b"".join(varint(d) for d in crop_shape)
        tensor_head = delimited(b"\x0a", shape) + b"\x10" + varint(stn_pb2.DATA_TYPE_FLOAT32)
        tensor_head += b"\x1a" + varint(self.crop_bytes)
        self.crop_head = b"\x12" + varint(len(tensor_head) + self.crop_bytes) + tensor_head
        self.theta_head = b"\x22" + varint(self.theta_bytes) if num_params else b""
        lengths = {len(score) for score in self.scores}
        # Scores of one length: a prediction's length depends only on top_k.
        self.score_length = lengths.pop() if len(lengths) == 1 else None
        self.score_table = (
            np.frombuffer(b"".join(self.scores), np.uint8).reshape(len(labels), -1)
            if self.score_length
            else None
        )

    def predictions(
        self,
        order: np.ndarray,
        probabilities: np.ndarray,
        crops: np.ndarray,
        thetas: np.ndarray,
        pngs: list[bytes] | None = None,
    ) -> bytes:
        """The predictions field of a response: `order` int[N, k] (the top k classes of each
        image), `probabilities` float32[N, k] (theirs), `crops` float32[N, C, h, w], `thetas`
        float32[N, P], `pngs` each crop as PNG (None: not asked for)."""
        count, k = order.shape
        if self.score_table is None or pngs is not None or count < ROWS_FROM:
            return self._one_by_one(order, probabilities, crops, thetas, pngs)
        crops = np.ascontiguousarray(crops, "<f4").reshape(count, -1).view(np.uint8)
        thetas = np.ascontiguousarray(thetas, "<f4").reshape(count, -1).view(np.uint8)
        probabilities = np.ascontiguousarray(probabilities, "<f4").view(np.uint8)
        score = self.score_length + 4
        body = k * score + len(self.crop_head) + self.crop_bytes
        body += len(self.theta_head) + self.theta_bytes
        head = _PREDICTION + varint(body)
        rows = np.empty((count, len(head) + body), np.uint8)
        at = _put(rows, 0, head)
        for j in range(k):
            rows[:, at : at + self.score_length] = self.score_table[order[:, j]]
            rows[:, at + self.score_length : at + score] = probabilities[:, 4 * j : 4 * j + 4]
            at += score
        at = _put(rows, at, self.crop_head)
        rows[:, at : at + self.crop_bytes] = crops
        at = _put(rows, at + self.crop_bytes, self.theta_head)
        rows[:, at:] = thetas
        return rows.tobytes()

    def _one_by_one(self, order, probabilities, crops, thetas, pngs) -> bytes:
        """Each prediction joined on its own from slices of the arrays' bytes (rows of
        different lengths, or too few for the row array to pay)."""
        k = order.shape[1]
        crop_data = np.ascontiguousarray(crops, "<f4").tobytes()
        theta_data = np.ascontiguousarray(thetas, "<f4").tobytes()
        score_data = np.ascontiguousarray(probabilities, "<f4").tobytes()
        crop_size, theta_size = self.crop_bytes, self.theta_bytes
        parts = []
        for i, indices in enumerate(order.tolist()):
            fields = []
            for j, index in enumerate(indices):
                at = 4 * (i * k + j)
                fields += (self.scores[index], score_data[at : at + 4])
            fields += (self.crop_head, crop_data[i * crop_size : (i + 1) * crop_size])
            if pngs is not None:
                fields.append(delimited(b"\x1a", pngs[i]))
            fields += (self.theta_head, theta_data[i * theta_size : (i + 1) * theta_size])
            prediction = b"".join(fields)
            parts += (_PREDICTION, varint(len(prediction)), prediction)
        return b"".join(parts)


def _put(rows: np.ndarray, at: int, constant: bytes) -> int:
    """Write `constant` into every row of `rows` at column `at`; returns the column after it."""
    end = at + len(constant)
    rows[:, at:end] = np.frombuffer(constant, np.uint8)
    return end


def response_bytes(model: str, version: int, request_id: str, predictions: bytes) -> bytes:
    """A whole serialised PredictResponse around its predictions field (`ResponseLayout`)."""
    head = delimited(b"\x0a", model.encode()) if model else b""
    if version:
        head += b"\x10" + varint(version)
    tail = delimited(b"\x22", request_id.encode()) if request_id else b""
    return head + predictions + tail
