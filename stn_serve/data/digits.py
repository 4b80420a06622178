"""The `digits` source: scikit-learn's 8×8 handwritten digits, framed like MNIST's 28×28.

The 1,797 images ship inside scikit-learn's wheel, so this source needs no download; it is the
default for training and tests. As in MNIST, each digit is scaled to fill a 20×20 box centred in
the 28×28 image: the 8×8 originals are cropped tight to the digit, and without the margin
rotations and projective warps would cut strokes off at the corners.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stn_serve.data.split import (
    Split,
    check_image_size,
    check_split,
    conform_images,
    stratified_split,
)

#: MNIST's size, so models and distortions (42×42 RTS, 60×60 TC canvases) match the paper's.
DIGITS_SIZE = (28, 28)
#: MNIST's digit box: 20 of the 28 pixels, 4 pixels of margin each side.
BOX_FRACTION = 20 / 28
#: Share of each class held out as the test split (stratified, fixed seed).
TEST_FRACTION = 0.2
SPLIT_SEED = 0
#: load_digits stores ink as integers 0..16.
_MAX_VALUE = 16.0


def load_digits_split(
    split: str, image_size: tuple[int, int] | None = None, channels: int | None = None
) -> Split:
    """Load one split of scikit-learn's digits.

    Args:
        split (str): "train" (1,438 images) or "test" (359 images): 20% of each class, rounded,
            drawn with a fixed seed, so the split is the same on every machine.
        image_size ((int, int) | None): output (H, W). Default: None, meaning 28×28.
        channels (int | None): 1 or 3. Default: None, meaning 1.

    Returns:
        Split: images Tensor[N, C, H, W] float32 in [0, 1] (bicubic upscaling from 8×8, clamped),
        labels Tensor[N] int64, classes "0".."9". The digit fills the middle 20/28 of each side.
    """
    from sklearn.datasets import load_digits

    check_split(split)
    size = DIGITS_SIZE if image_size is None else check_image_size(image_size)
    data = load_digits()
    train_idx, test_idx = stratified_split(data.target, TEST_FRACTION, SPLIT_SEED)
    idx = train_idx if split == "train" else test_idx
    small = torch.from_numpy(data.images[idx]).float().div_(_MAX_VALUE).unsqueeze(1)  # (N, 1, 8, 8)
    box = tuple(max(1, round(s * BOX_FRACTION)) for s in size)
    # Bicubic overshoots at strong edges; the clamp keeps the [0, 1] contract.
    digits = F.interpolate(small, size=box, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    top, left = (size[0] - box[0]) // 2, (size[1] - box[1]) // 2
    images = F.pad(digits, (left, size[1] - box[1] - left, top, size[0] - box[0] - top))
    return Split(
        images=conform_images(images, None, channels),
        labels=torch.from_numpy(data.target[idx]).long(),
        classes=[str(name) for name in data.target_names],
        source="digits",
    )
