"""`request_images`: a request's images as one array. Raw tensors of one dtype and shape take a
whole-request path; anything else, and any bad image, goes image by image, so every error still
names the image at fault."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from stn_serve._proto.stn.v1 import stn_pb2
from stn_serve.errors import InvalidInputError
from stn_serve.server.images import check_pixels
from stn_serve.server.stn_service import image_array, request_images

SHAPE = (1, 28, 28)
FLOAT32, UINT8 = stn_pb2.DATA_TYPE_FLOAT32, stn_pb2.DATA_TYPE_UINT8


def tensor(array: np.ndarray, dtype=FLOAT32) -> stn_pb2.Image:
    return stn_pb2.Image(
        tensor=stn_pb2.Tensor(shape=array.shape, dtype=dtype, data=array.tobytes())
    )


def png(array_hw: np.ndarray) -> stn_pb2.Image:
    buffer = io.BytesIO()
    Image.fromarray(array_hw).save(buffer, format="PNG")
    return stn_pb2.Image(encoded=buffer.getvalue())


def one_by_one(images) -> np.ndarray:
    return np.stack([image_array(image, SHAPE, i) for i, image in enumerate(images)])


rng = np.random.default_rng(0)
FLOATS = rng.random((5, *SHAPE), dtype=np.float32)
BYTES = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)

SAME_KIND = {
    "float32 [C, H, W]": [tensor(image) for image in FLOATS],
    "uint8 [H, W]": [tensor(image, UINT8) for image in BYTES],
    "uint8 [C, H, W]": [tensor(image[None], UINT8) for image in BYTES],
}
MIXED = {
    "float32 and uint8": [tensor(FLOATS[0]), tensor(BYTES[1], UINT8), tensor(FLOATS[2])],
    "[C, H, W] and [H, W]": [tensor(BYTES[0][None], UINT8), tensor(BYTES[1], UINT8)],
    "tensor and PNG": [tensor(FLOATS[0]), png(BYTES[1]), tensor(FLOATS[2])],
}


@pytest.mark.parametrize("name", [*SAME_KIND, *MIXED])
def test_every_kind_of_request_gives_what_each_image_gives_alone(name):
    images = {**SAME_KIND, **MIXED}[name]
    batch = request_images(images, SHAPE)
    assert batch.dtype == np.float32 and batch.shape == (len(images), *SHAPE)
    np.testing.assert_array_equal(batch, one_by_one(images))


def test_uint8_pixels_are_scaled_to_the_unit_interval():
    batch = request_images(SAME_KIND["uint8 [H, W]"], SHAPE)
    np.testing.assert_allclose(batch[:, 0], BYTES / np.float32(255.0), rtol=1e-7)


def _with_nan() -> np.ndarray:
    image = FLOATS[3].copy()
    image[0, 5, 5] = np.nan
    return image


BAD_AT_INDEX_3 = {
    "nan": (tensor(_with_nan()), r"images\[3\] holds NaN or infinite values"),
    "out of range": (
        tensor(FLOATS[3] + 1.5),
        r"images\[3\] has values in \[1\.5\d*, 2\.\d+\]; expected values in \[0, 1\]",
    ),
    "byte count": (
        stn_pb2.Image(
            tensor=stn_pb2.Tensor(shape=SHAPE, dtype=FLOAT32, data=FLOATS[3].tobytes()[:-4])
        ),
        r"images\[3\] has 3132 bytes; shape \[1, 28, 28\] of float32 needs 3136",
    ),
    "shape": (tensor(FLOATS[3][:, :14]), r"images\[3\] has shape \[1, 14, 28\]"),
    "dtype": (tensor(FLOATS[3], stn_pb2.DATA_TYPE_UNSPECIFIED), r"images\[3\] has dtype 0"),
    "empty": (stn_pb2.Image(), r"images\[3\] is empty"),
}


@pytest.mark.parametrize("name", list(BAD_AT_INDEX_3))
def test_a_bad_image_among_good_ones_is_named(name):
    bad, message = BAD_AT_INDEX_3[name]
    images = [tensor(image) for image in FLOATS]
    images[3] = bad
    with pytest.raises(InvalidInputError) as error:
        request_images(images, SHAPE)
    assert re.search(message, str(error.value)), str(error.value)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (0.0, True),
        (-0.0, True),  # its sign bit fails the one-pass check; the full check accepts it
        (1.0, True),
        (np.nextafter(np.float32(1), np.float32(2)), False),
        (-1e-30, False),
        (np.inf, False),
        (-np.inf, False),
        (np.nan, False),
    ],
)
def test_pixel_range_check_at_its_edges(value, accepted):
    image = np.full((1, 4, 4), 0.5, np.float32)
    image[0, 1, 2] = value
    if accepted:
        assert check_pixels(image, "image") is image
    else:
        with pytest.raises(InvalidInputError, match="image"):
            check_pixels(image, "image")
