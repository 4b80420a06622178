"""A second RTS generator, independent of the project's: Pillow warps and ink-box placement.

The training data's RTS (`stn_serve.data.distortions`) rotates and scales with torch's bilinear
`grid_sample` and places the whole 28×28 frame in the 42×42 canvas. This one shares nothing with
that code path: Pillow's bicubic rotation (canvas expanded), Lanczos resizing, and placement of
the digit's ink bounding box (not its frame) uniformly wherever it fits in the canvas, with the
paper's ranges (rotation ±45°, scale 0.7–1.2). A model that learnt the images rather than the
generator's quirks classifies both alike.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

ROTATION_DEG = 45.0
SCALE = (0.7, 1.2)
CANVAS = 42


def pillow_rts(images: torch.Tensor, seed: int) -> torch.Tensor:
    """RTS-distort Tensor[N, 1, 28, 28] images in [0, 1] into Tensor[N, 1, 42, 42]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(images), 1, CANVAS, CANVAS), dtype=np.float32)
    for index, image in enumerate(images[:, 0].numpy()):
        picture = Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L")
        picture = picture.rotate(
            rng.uniform(-ROTATION_DEG, ROTATION_DEG), resample=Image.Resampling.BICUBIC, expand=True
        )
        size = max(1, round(picture.width * rng.uniform(*SCALE)))
        picture = picture.resize((size, size), resample=Image.Resampling.LANCZOS)
        ink = picture.crop(picture.getbbox() or (0, 0, size, size))
        if max(ink.size) > CANVAS:  # a large tilted digit: shrink it to fit the canvas
            ratio = CANVAS / max(ink.size)
            new_size = (max(1, int(ink.width * ratio)), max(1, int(ink.height * ratio)))
            ink = ink.resize(new_size, resample=Image.Resampling.LANCZOS)
        left = rng.integers(0, CANVAS - ink.width + 1)
        top = rng.integers(0, CANVAS - ink.height + 1)
        canvas = Image.new("L", (CANVAS, CANVAS))
        canvas.paste(ink, (int(left), int(top)))
        out[index, 0] = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(out)
