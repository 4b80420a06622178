"""Saving a predicted crop (float32 [C, h, w] in [0, 1]) as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stn_serve.errors import InvalidInputError

_CHANNELS = (1, 3, 4)


def crop_image(crop: np.ndarray) -> Image.Image:
    """The crop as an 8-bit PIL image (values clipped to [0, 1], then scaled to 0..255)."""
    if crop.ndim != 3 or crop.shape[0] not in _CHANNELS:
        raise InvalidInputError(
            f"a crop must be [C, h, w] with C in {list(_CHANNELS)}, got {list(crop.shape)}"
        )
    pixels = np.round(np.clip(crop, 0.0, 1.0) * 255.0).astype(np.uint8)
    # Pillow infers L / RGB / RGBA from a uint8 [h, w] / [h, w, 3] / [h, w, 4] array.
    return Image.fromarray(pixels[0] if crop.shape[0] == 1 else np.moveaxis(pixels, 0, -1))


def crop_name(key: str) -> str:
    """Where the crop of input `key` goes, relative to the crops folder: the same relative path,
    with `.png` appended unless it already ends so (`a/b.jpg` -> `a/b.jpg.png`), so inputs that
    differ only by suffix do not overwrite each other's crops."""
    return key if key.lower().endswith(".png") else f"{key}.png"


def save_crop(crop: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    crop_image(crop).save(path, format="PNG")
