"""Checks of the images in a request, and raw tensors -> float32 arrays the model takes. Every
check happens here, before a request joins a batch, and every error names the image and what was
expected. (Encoded images decode through `stn_serve.imaging.decode_encoded`, as in batch jobs.)"""

from __future__ import annotations

import numpy as np

from stn_serve.errors import InvalidInputError, ResourceExhaustedError


def check_count(count: int, limit: int, what: str = "images") -> None:
    if count == 0:
        raise InvalidInputError(f"the request holds no {what}; send at least one")
    if count > limit:
        raise ResourceExhaustedError(
            f"the request holds {count} {what}, more than the limit of {limit} "
            "(--max-images-per-request); split it"
        )


#: float32 1.0's bits. Read as unsigned integers, the floats in [+0, 1] are exactly the values
#: up to it: a set sign bit (negative values, -0.0 too), infinities and NaNs all read higher.
_ONE_BITS = int(np.float32(1.0).view(np.uint32))
_LITTLE_F4 = np.dtype("<f4")


def check_pixels(array: np.ndarray, what: str) -> np.ndarray:
    """float32 values must be finite and in [0, 1]."""
    if array.dtype == _LITTLE_F4 and int(array.view("<u4").max()) <= _ONE_BITS:
        return array  # one pass on the hot path; -0.0 and any refusal take the checks below
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:  # False for NaN too
        return array
    if not np.isfinite(array).all():
        raise InvalidInputError(
            f"{what} holds NaN or infinite values; expected finite values in [0, 1]"
        )
    raise InvalidInputError(f"{what} has values in [{low:g}, {high:g}]; expected values in [0, 1]")


#: The dtypes a raw tensor may have, as little-endian numpy dtypes.
RAW_DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}


def decode_raw(
    data: bytes,
    dims: list[int],
    dtype: str,
    shape: tuple[int, int, int],
    what: str,
    count: int | None = None,
) -> np.ndarray:
    """A raw tensor ([C, H, W], or [H, W] for one channel; dtype "uint8" or "float32", little-endian
    C order) -> float32[C, H, W] in [0, 1]. With `count`, `data` holds that many such tensors back
    to back -> float32[count, C, H, W]."""
    channels, height, width = shape
    dims = list(dims)
    if dims != [channels, height, width] and (channels != 1 or dims != [height, width]):
        accepted = [[channels, height, width]] + ([[height, width]] if channels == 1 else [])
        raise InvalidInputError(
            f"{what} has shape {dims}; expected {' or '.join(map(str, accepted))}"
        )
    numpy_dtype = RAW_DTYPES.get(dtype)
    if numpy_dtype is None:
        raise InvalidInputError(f"{what} has dtype {dtype}; expected uint8 or float32")
    expected_bytes = (count or 1) * channels * height * width * numpy_dtype.itemsize
    if len(data) != expected_bytes:
        raise InvalidInputError(
            f"{what} has {len(data)} bytes; shape {dims} of {dtype} needs {expected_bytes}"
        )
    array = np.frombuffer(data, numpy_dtype).reshape(shape if count is None else (count, *shape))
    if dtype == "uint8":
        return np.divide(array, np.float32(255.0), dtype=np.float32)
    # Read-only view of the request's bytes: the batch is assembled into a new array anyway.
    return check_pixels(array, what)
