"""Conversion between numpy arrays and the `stn.v1.Tensor` message."""

from __future__ import annotations

import numpy as np

from stn_serve._proto.stn.v1 import stn_pb2
from stn_serve.errors import InvalidInputError

_DTYPES = {
    stn_pb2.DATA_TYPE_UINT8: np.dtype(np.uint8),
    stn_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
}


def to_tensor(array: np.ndarray) -> stn_pb2.Tensor:
    """An image array ([C, H, W] or [H, W]; uint8 0..255 or float in [0, 1]) as a Tensor message.

    Floating arrays are sent as little-endian float32; other dtypes are rejected rather than
    silently rescaled.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise InvalidInputError(
            f"an image array must be [C, H, W] or [H, W], got shape {list(array.shape)}"
        )
    if array.dtype == np.uint8:
        dtype = stn_pb2.DATA_TYPE_UINT8
    elif np.issubdtype(array.dtype, np.floating):
        dtype = stn_pb2.DATA_TYPE_FLOAT32
    else:
        raise InvalidInputError(f"an image array must be uint8 or float, got dtype {array.dtype}")
    data = np.ascontiguousarray(array, dtype=_DTYPES[dtype]).tobytes()
    return stn_pb2.Tensor(shape=array.shape, dtype=dtype, data=data)


def from_tensor(tensor: stn_pb2.Tensor) -> np.ndarray:
    """The array a Tensor message holds (a read-only view of its bytes)."""
    if tensor.dtype not in _DTYPES:
        raise InvalidInputError(
            f"tensor dtype must be one of {sorted(_DTYPES)}, got {tensor.dtype}"
        )
    return np.frombuffer(tensor.data, dtype=_DTYPES[tensor.dtype]).reshape(tuple(tensor.shape))
