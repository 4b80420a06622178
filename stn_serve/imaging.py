"""Images to model pixels and back: Pillow and numpy only, the same steps for every size and mode.

Training (the `folder` source) and serving (encoded uploads, batch inference) both decode through
`pixels_from_image`, so a served model sees exactly the pixels it was trained on; the server's
PNG crops and the batch job's crop files both go through `crop_image`. Free of torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stn_serve.errors import InvalidInputError

#: Pillow modes that hold one grey plane.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: What Pillow raises for a file it cannot decode (truncated, corrupt, not an image, too large).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
#: 16- and 32-bit integer grey modes: scaled by 65535 instead of being clipped at 255.
_WIDE_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def is_grey(path: str | Path) -> bool:
    """Whether the image's header says it has one grey plane (reads the header only)."""
    with Image.open(path) as image:
        return image.mode in GREY_MODES


#: Pillow mode for each channel count a model may take.
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
#: What the server and batch inference accept as encoded images.
ENCODED_FORMATS = ("PNG", "JPEG")
# Decoding a larger picture could take the server's memory; no use case needs one.
MAX_ENCODED_PIXELS = 40_000_000


def pixels_from_image(image: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """Pixels of an open Pillow image, at a fixed size and channel count.

    Steps: apply the EXIF orientation; convert to grey ("L", ITU-R 601 luma), "RGB" (alpha is
    dropped) or "RGBA"; resize to (H, W) with bilinear filtering (Pillow's, which also averages
    when shrinking); scale to [0, 1]. 16-bit grey is scaled by 65535 instead of being clipped.

    Args:
        image (PIL.Image.Image): any mode Pillow reads.
        size ((int, int)): output (H, W).
        channels (int): 1, 3 or 4.

    Returns:
        ndarray[C, H, W]: float32 in [0, 1].
    """
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {sorted(CHANNEL_MODES)}, got {channels}")
    height, width = size
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_GREY:
        wide = np.asarray(image, dtype=np.float32) / 65535.0
        plane = np.asarray(Image.fromarray(wide, mode="F").resize((width, height), Image.BILINEAR))
        pixels = np.clip(plane, 0.0, 1.0)[..., None]
        return np.repeat(pixels, channels, axis=-1).transpose(2, 0, 1).copy()
    image = image.convert(CHANNEL_MODES[channels]).resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
    return pixels.transpose(2, 0, 1).copy()


def decode_image(path: str | Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """Read an image file as float32 pixels [C, H, W] in [0, 1] (see `pixels_from_image`).

    Raises:
        one of DECODE_ERRORS: the file is not a readable image.
    """
    with Image.open(path) as image:
        return pixels_from_image(image, size, channels)


def crop_image(crop: np.ndarray) -> Image.Image:
    """A crop (float32 [C, h, w], C in 1, 3, 4) as an 8-bit Pillow image: values clipped to
    [0, 1], then scaled to 0..255 and rounded."""
    if crop.ndim != 3 or crop.shape[0] not in CHANNEL_MODES:
        raise InvalidInputError(
            f"a crop must be [C, h, w] with C in {sorted(CHANNEL_MODES)}, got {list(crop.shape)}"
        )
    pixels = np.round(np.clip(crop, 0.0, 1.0) * 255.0).astype(np.uint8)
    # Pillow infers L / RGB / RGBA from a uint8 [h, w] / [h, w, 3] / [h, w, 4] array.
    return Image.fromarray(pixels[0] if crop.shape[0] == 1 else np.moveaxis(pixels, 0, -1))


def decode_encoded(data: bytes, shape: tuple[int, int, int], what: str) -> np.ndarray:
    """PNG or JPEG bytes of any size -> float32[C, H, W] in [0, 1], converted to C channels and
    resized to H x W (see `pixels_from_image`). Errors are InvalidInputError naming `what`."""
    channels, height, width = shape
    if channels not in CHANNEL_MODES:
        raise InvalidInputError(
            f"{what}: encoded images cannot feed a model with {channels} channels"
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ENCODED_FORMATS:
                raise InvalidInputError(
                    f"{what} is {image.format}; expected one of {list(ENCODED_FORMATS)}"
                )
            if image.width * image.height > MAX_ENCODED_PIXELS:
                raise InvalidInputError(
                    f"{what} is {image.width}x{image.height}; expected at most {MAX_ENCODED_PIXELS} pixels"
                )
            return pixels_from_image(image, (height, width), channels)
    except InvalidInputError:
        raise  # a ValueError of our own, already naming the image
    except UnidentifiedImageError as error:
        raise InvalidInputError(
            f"{what} ({len(data)} bytes) is not an image Pillow can read; expected PNG or JPEG bytes"
        ) from error
    except DECODE_ERRORS as error:
        raise InvalidInputError(f"{what} cannot be decoded as PNG or JPEG: {error}") from error


def encode_png(crop: np.ndarray) -> bytes:
    """float32[C, h, w] in [0, 1] (C in 1, 3, 4) -> PNG bytes."""
    buffer = io.BytesIO()
    crop_image(crop).save(buffer, format="PNG")
    return buffer.getvalue()
