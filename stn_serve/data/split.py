"""The `Split` every image source returns, and the helpers sources share to build one."""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from stn_serve.errors import InvalidInputError

SPLITS = ("train", "test")


@dataclass
class Split:
    """One split of a labelled image source.

    Attributes:
        images (Tensor[N, C, H, W]): float32 pixels in [0, 1].
        labels (Tensor[N]): int64 class indices into `classes`.
        classes (list[str]): class names, index i names label i.
        source (str): the source's name (one of `stn_serve.data.SOURCES`).
        skipped (list[tuple[str, str]]): (path, reason) of every file the source could not read
            and left out; empty for sources that read whole archives. Default: empty.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


def check_split(split: str) -> None:
    """Raise InvalidInputError unless `split` is one of SPLITS."""
    if split not in SPLITS:
        raise InvalidInputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices class by class so train and test keep the class proportions.

    Args:
        labels (ndarray[N]): integer class of each item.
        test_fraction (float): share of each class that goes to test (rounded; a class with two
            or more items keeps at least one on each side).
        seed (int): seed of the local generator that shuffles each class.

    Returns:
        (ndarray[N_train], ndarray[N_test]): sorted indices into `labels`.
    """
    rng = np.random.default_rng(seed)
    train, test = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(members) * test_fraction)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def conform_images(
    images: torch.Tensor, image_size: tuple[int, int] | None, channels: int | None
) -> torch.Tensor:
    """Resize and convert a batch to the size and channel count a caller asked for.

    Args:
        images (Tensor[N, C, H, W]): float32 pixels in [0, 1], C in {1, 3}.
        image_size ((int, int) | None): target (H', W'); None keeps (H, W).
        channels (int | None): target C' in {1, 3}; None keeps C. Grey to RGB repeats the plane;
            RGB to grey uses the ITU-R 601 luma weights (as Pillow's "L" conversion does).

    Returns:
        Tensor[N, C', H', W']: float32 in [0, 1].
    """
    check_channels(channels)
    if image_size is not None:
        image_size = check_image_size(image_size)
        if tuple(images.shape[-2:]) != image_size:
            images = F.interpolate(
                images, size=image_size, mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
    if channels is not None and channels != images.shape[1]:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1).contiguous()
        else:
            luma = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
            images = (images * luma).sum(dim=1, keepdim=True)
    return images


def as_integer(name: str, value) -> int:
    """`value` as an int (seeds, epochs), or InvalidInputError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_channels(channels: int | None) -> None:
    """Raise InvalidInputError unless `channels` is None, 1 or 3."""
    if channels is not None and channels not in (1, 3):
        raise InvalidInputError(f"channels must be 1 or 3, got {channels}")


def check_image_size(image_size) -> tuple[int, int]:
    """Return `image_size` as a (H, W) tuple of positive ints, or raise InvalidInputError."""
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, Integral) and s > 0 for s in size):
        raise InvalidInputError(
            f"image_size must be two positive integers (H, W), got {image_size!r}"
        )
    return int(size[0]), int(size[1])
