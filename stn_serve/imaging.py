"""Images to model pixels and back: Pillow and numpy only, the same steps for every size and mode.

Training (the `folder` source) and serving (encoded uploads, batch inference) both decode through
`pixels_from_image`, so a served model sees exactly the pixels it was trained on; the server's
PNG crops and the batch job's crop files both go through `crop_image`. Free of torch.

A server decodes under a `DecodeControl`: the memory an image's decoding takes is estimated from
its header (`decode_cost`) and refused before decoding when it is over the per-image limit, the
decodes in flight share a server-wide `DecodeBudget`, large JPEGs are decoded at a reduced scale
(JPEG draft mode), and the request's deadline and cancellation are checked between the steps.
Without a control (training, batch inference) every image is decoded at full size.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stn_serve.errors import DeadlineExceededError, InvalidInputError, RequestCancelledError

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


def _no_checkpoint() -> None:
    pass


def pixels_from_image(
    image: Image.Image, size: tuple[int, int], channels: int, checkpoint=_no_checkpoint
) -> np.ndarray:
    """Pixels of an open Pillow image, at a fixed size and channel count. `image` is changed in
    place (turned upright); `checkpoint()` is called between the steps and may raise to stop.

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
    # In place, and no conversion to the mode it already has: each would copy the full-size image.
    ImageOps.exif_transpose(image, in_place=True)
    checkpoint()
    if image.mode in _WIDE_GREY:
        wide = np.asarray(image, dtype=np.float32)
        wide /= 65535.0
        plane = Image.fromarray(wide, mode="F")
        del wide
        checkpoint()
        pixels = np.clip(np.asarray(plane.resize((width, height), Image.BILINEAR)), 0.0, 1.0)
        return np.repeat(pixels[..., None], channels, axis=-1).transpose(2, 0, 1).copy()
    mode = CHANNEL_MODES[channels]
    if image.mode != mode:
        image = image.convert(mode)
        checkpoint()
    image = image.resize((width, height), Image.BILINEAR)
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


# Bytes a pixel takes in Pillow's memory, by mode; every mode not named takes 4.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
MIB = 1 << 20


def decode_cost(mode: str, size: tuple[int, int], channels: int) -> int:
    """Bytes that `pixels_from_image` holds at its peak for an image of Pillow `mode` and
    `size` (width, height) read at `channels`: the decoded planes, plus the converted ones (16-bit
    grey: a transient bytes copy and two float32 planes). Measured peaks stay within it."""
    pixels = size[0] * size[1]
    stored = _PIXEL_BYTES.get(mode, 4)
    if mode in _WIDE_GREY:
        return pixels * (2 * stored + 8)
    target = CHANNEL_MODES[channels]
    return pixels * (stored + (0 if mode == target else _PIXEL_BYTES.get(target, 4)))


def _jpeg_coefficient_bytes(image: Image.Image) -> int:
    """A progressive JPEG keeps every DCT coefficient of the full-size image while it decodes
    (2 bytes each, chroma planes at their subsampled size), whatever scale it is decoded at."""
    if not image.info.get("progressive"):
        return 0
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
    most = max(h for _, h, _, _ in layers) * max(v for _, _, v, _ in layers)
    share = sum(h * v for _, h, v, _ in layers) / most
    return math.ceil(2 * image.width * image.height * share)


class DecodeBudget:
    """Bytes that the decodes in flight of one server may hold together (see `decode_cost`)."""

    def __init__(self, total_bytes: int):
        self.total_bytes = total_bytes
        self.held = 0
        self._freed = threading.Condition()

    @contextlib.contextmanager
    def reserved(self, cost: int, control: DecodeControl, what: str):
        """Hold `cost` bytes while the block runs, waiting for room until `control` stops it."""
        if cost > self.total_bytes:
            raise InvalidInputError(
                f"{what} would take {cost / MIB:.1f} MiB to decode, over the server's decode "
                f"budget of {self.total_bytes / MIB:.1f} MiB"
            )
        with self._freed:
            while self.held + cost > self.total_bytes:
                control.check(what)
                self._freed.wait(control.wait_s())
            self.held += cost
        try:
            yield
        finally:
            with self._freed:
                self.held -= cost
                self._freed.notify_all()


# How often a decode waiting for budget looks whether its request was cancelled.
_POLL_S = 0.05


@dataclass
class DecodeControl:
    """How a server decodes one request's images.

    max_image_bytes: largest `decode_cost` of one image; a larger one is refused before decoding.
    budget: the server-wide budget the decodes share (None: unshared).
    deadline: `time.monotonic()` after which decoding stops (None: no deadline).
    cancelled: set when the client has gone; decoding stops at the next step.
    """

    max_image_bytes: int
    budget: DecodeBudget | None = None
    deadline: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def check(self, what: str) -> None:
        """Raise when the request's client is gone or its deadline has passed."""
        if self.cancelled.is_set():
            raise RequestCancelledError(f"the client cancelled the request while {what} decoded")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceededError(f"deadline passed while {what} decoded; it was not run")

    def wait_s(self) -> float:
        """How long to wait for budget before looking again."""
        if self.deadline is None:
            return _POLL_S
        return max(0.0, min(_POLL_S, self.deadline - time.monotonic()))


def _decode_under(
    image: Image.Image, shape: tuple[int, int, int], what: str, control: DecodeControl
) -> np.ndarray:
    """`pixels_from_image` within `control`'s limits (see the module's docstring)."""
    channels, height, width = shape
    coefficients = _jpeg_coefficient_bytes(image) if image.format == "JPEG" else 0
    full = f"{image.width}x{image.height} {image.mode}"
    if image.format == "JPEG":
        side = max(height, width)  # either way up: EXIF may turn it a quarter
        image.draft(None, (side, side))
    cost = coefficients + decode_cost(image.mode, image.size, channels)
    if cost > control.max_image_bytes:
        raise InvalidInputError(
            f"{what} ({full}) would take {cost / MIB:.1f} MiB to decode; the limit is "
            f"{control.max_image_bytes / MIB:.1f} MiB an image (--max-decode-mb); send it smaller"
        )
    reservation = (
        control.budget.reserved(cost, control, what) if control.budget else contextlib.nullcontext()
    )
    with reservation:
        control.check(what)
        image.load()
        return pixels_from_image(image, (height, width), channels, lambda: control.check(what))


def decode_encoded(
    data: bytes, shape: tuple[int, int, int], what: str, control: DecodeControl | None = None
) -> np.ndarray:
    """PNG or JPEG bytes of any size -> float32[C, H, W] in [0, 1], converted to C channels and
    resized to H x W (see `pixels_from_image`). Errors are InvalidInputError naming `what`.
    With `control`, decoding keeps to its limits (see the module's docstring)."""
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
            if control is not None:
                return _decode_under(image, shape, what, control)
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
