"""Turn what a caller has (file paths, encoded bytes, PIL images, numpy arrays) into `stn.v1.Image`
messages.

Paths, bytes and PIL images travel encoded (the server converts and resizes them); arrays travel as
raw tensors and must already match the model's input size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from stn_serve._proto.stn.v1 import stn_pb2
from stn_serve.client.tensors import to_tensor
from stn_serve.errors import InvalidInputError, NotFoundError


def to_image(item: Any) -> stn_pb2.Image:
    """One image: a path (str or os.PathLike), PNG/JPEG bytes, a PIL image or an array
    ([C, H, W] or [H, W], uint8 or float in [0, 1])."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return stn_pb2.Image(encoded=bytes(item))
    if isinstance(item, (str, os.PathLike)):
        try:
            with open(item, "rb") as file:
                return stn_pb2.Image(encoded=file.read())
        except FileNotFoundError:
            raise NotFoundError(f"image file {os.fspath(item)!r} does not exist") from None
    if isinstance(item, np.ndarray):
        return stn_pb2.Image(tensor=to_tensor(item))
    if hasattr(item, "save") and hasattr(item, "mode"):  # a PIL image, without importing PIL
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return stn_pb2.Image(encoded=buffer.getvalue())
    raise InvalidInputError(
        "an image must be a path, PNG/JPEG bytes, a PIL image or a numpy array, "
        f"got {type(item).__name__}"
    )


def to_images(images: Any) -> list[stn_pb2.Image]:
    """Many images: a 4-D array [N, C, H, W] (one image per row), or an iterable of what
    `to_image` takes, or one such item on its own."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [stn_pb2.Image(tensor=to_tensor(row)) for row in images]
        return [to_image(images)]
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(
        images, "mode"
    ):
        return [to_image(images)]
    if isinstance(images, Iterable):
        converted = [to_image(item) for item in images]
        if not converted:
            raise InvalidInputError("expected at least one image, got none")
        return converted
    return [to_image(images)]
