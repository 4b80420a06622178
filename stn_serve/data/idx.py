"""Reader for IDX files, the format MNIST and Fashion-MNIST ship in (raw or gzip-compressed).

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from stn_serve.errors import InvalidInputError, NotFoundError

#: IDX dtype code -> numpy dtype (big-endian) and a name for messages.
IDX_DTYPES = {
    0x08: (np.dtype(">u1"), "unsigned byte"),
    0x09: (np.dtype(">i1"), "signed byte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}
#: Magic numbers of the MNIST-family files: unsigned bytes, 3-D images, 1-D labels.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (`.gz` is decompressed) into an array.

    Args:
        path (str | Path): the file.
        expected_magic (int | None): the whole magic number the caller needs (e.g. IMAGES_MAGIC,
            0x00000803 for unsigned-byte 3-D). Default: None, meaning any valid IDX file.

    Returns:
        ndarray[d_1, ..., d_k]: values in the file's dtype, native byte order.

    Raises:
        NotFoundError: the file does not exist.
        InvalidInputError: naming the file, when it is not valid gzip, its magic number is not
            the expected one or not IDX at all, its dtype code is unknown, or it holds more or
            fewer bytes than its dimensions call for.
    """
    path = Path(path)
    data = _read_bytes(path)
    name = path.name
    if len(data) < 4:
        raise InvalidInputError(
            f"{name}: file is {len(data)} bytes, too short for an IDX magic number (4 bytes)"
        )
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise InvalidInputError(
            f"{name}: magic number 0x{expected_magic:08X} expected, got 0x{magic:08X}"
        )
    code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or ndim == 0:
        raise InvalidInputError(
            f"{name}: not an IDX file: magic number 0x0000TTDD "
            "(TT a dtype code, DD >= 1 dimensions) "
            f"expected, got 0x{magic:08X}"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise InvalidInputError(f"{name}: IDX dtype code one of {known} expected, got 0x{code:02X}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InvalidInputError(
            f"{name}: truncated header: {header} bytes expected for {ndim} dimensions, "
            f"got {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype, dtype_name = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes"
        dims = "×".join(str(d) for d in shape)
        raise InvalidInputError(
            f"{name}: {problem}: {expected} bytes expected for {dims} {dtype_name} values, "
            f"got {len(data)}"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file")
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise InvalidInputError(f"{path.name}: not a readable gzip file ({error})") from error
