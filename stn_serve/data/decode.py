"""Decode one image file into pixels: Pillow and numpy only, the same steps for every size and mode.

Kept free of torch so the steps are easy to mirror where the serving side decodes uploads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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


def decode_image(path: str | Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """Read an image file as float32 pixels of a fixed size.

    Steps: apply the EXIF orientation; convert to grey ("L", ITU-R 601 luma) or "RGB" (alpha is
    dropped); resize to (H, W) with bilinear filtering (Pillow's, which also averages when
    shrinking); scale to [0, 1].

    Args:
        path (str | Path): a PNG or JPEG (any format Pillow reads works).
        size ((int, int)): output (H, W).
        channels (int): 1 or 3.

    Returns:
        ndarray[C, H, W]: float32 in [0, 1].

    Raises:
        one of DECODE_ERRORS: the file is not a readable image.
    """
    height, width = size
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_GREY:
            wide = np.asarray(image, dtype=np.float32) / 65535.0
            plane = np.asarray(
                Image.fromarray(wide, mode="F").resize((width, height), Image.BILINEAR)
            )
            pixels = np.clip(plane, 0.0, 1.0)[..., None]
            return np.repeat(pixels, channels, axis=-1).transpose(2, 0, 1).copy()
        image = image.convert("L" if channels == 1 else "RGB").resize(
            (width, height), Image.BILINEAR
        )
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    if channels == 1:
        return pixels[None]
    return pixels.transpose(2, 0, 1).copy()
