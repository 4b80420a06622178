"""Saving a predicted crop (float32 [C, h, w] in [0, 1]) as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stn_serve.imaging import crop_image


def crop_name(key: str) -> str:
    """Where the crop of input `key` goes, relative to the crops folder: the same relative path,
    with `.png` appended unless it already ends so (`a/b.jpg` -> `a/b.jpg.png`), so inputs that
    differ only by suffix do not overwrite each other's crops."""
    return key if key.lower().endswith(".png") else f"{key}.png"


def save_crop(crop: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    crop_image(crop).save(path, format="PNG")
