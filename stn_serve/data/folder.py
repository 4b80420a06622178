"""The `folder` source: the user's own PNG/JPEG images, one sub-folder per class.

Layouts:
- `DIR/train/<class>/...` and `DIR/test/<class>/...`: the splits as given;
- `DIR/<class>/...`: 20% of each class (rounded, fixed seed) is the test split.
Files are found at any depth inside a class folder; names starting with "." are ignored. Files
that are not PNG/JPEG, or that Pillow cannot read, are skipped and reported in `Split.skipped`
and the log, never fatal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from stn_serve.imaging import DECODE_ERRORS, decode_image, is_grey
from stn_serve.data.split import (
    Split,
    check_channels,
    check_image_size,
    check_split,
    stratified_split,
)
from stn_serve.errors import InvalidInputError, NotFoundError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: MNIST's size, the size the paper's distortion canvases are defined for.
DEFAULT_SIZE = (28, 28)
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_folder_split(
    split: str,
    data_dir: str | Path | None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> Split:
    """Load one split of a folder of class sub-folders.

    Args:
        split (str): "train" or "test".
        data_dir (str | Path): the folder (required).
        image_size ((int, int) | None): (H, W) every image is resized to. Default: None, 28×28.
        channels (int | None): 1 or 3. Default: None, meaning 1 when every image in the folder
            (both splits) is greyscale, else 3, so both splits agree.

    Returns:
        Split: images Tensor[N, C, H, W] float32 in [0, 1], labels Tensor[N] int64, classes the
        sorted sub-folder names, skipped the (path, reason) of every file left out.

    Raises:
        InvalidInputError: no data_dir, bad size/channels, test classes missing from train, or
            no readable image in the split.
        NotFoundError: data_dir is not a directory or holds no class folders.
    """
    check_split(split)
    size = DEFAULT_SIZE if image_size is None else check_image_size(image_size)
    check_channels(channels)
    if data_dir is None:
        raise InvalidInputError(
            "the folder source needs data_dir (--data-dir): "
            "a directory with one sub-folder per class"
        )
    root = Path(data_dir)
    if not root.is_dir():
        raise NotFoundError(
            f"{root}: no such directory (the folder source needs one sub-folder per class)"
        )

    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = _class_names(root / "train")
        _check_test_classes(classes, _class_names(root / "test"), root)
        listed = {name: _list_images(root / name, classes) for name in ("train", "test")}
        paths, labels, skipped = listed[split]
        all_paths = listed["train"][0] + listed["test"][0]
    else:
        classes = _class_names(root)
        # Files with other suffixes belong to neither split; both splits report them.
        all_paths, all_labels, skipped = _list_images(root, classes)
        train_idx, test_idx = stratified_split(np.array(all_labels), TEST_FRACTION, SPLIT_SEED)
        chosen = train_idx if split == "train" else test_idx
        paths, labels = [all_paths[i] for i in chosen], [all_labels[i] for i in chosen]

    if channels is None:
        channels = 1 if all(_grey_or_unreadable(path) for path in all_paths) else 3
    images, kept = [], []
    for path, label in zip(paths, labels):
        try:
            images.append(decode_image(path, size, channels))
        except DECODE_ERRORS as error:
            reason = f"unreadable image: {error}"
            log.warning(
                "skipping %s: %s", path, reason, extra={"path": str(path), "reason": reason}
            )
            skipped.append((str(path), reason))
            continue
        kept.append(label)
    if not images:
        raise InvalidInputError(
            f"{root}: no readable PNG/JPEG image in the {split} split "
            f"(skipped {len(skipped)} files)"
        )
    return Split(
        images=torch.from_numpy(np.stack(images)),
        labels=torch.tensor(kept, dtype=torch.int64),
        classes=classes,
        source="folder",
        skipped=skipped,
    )


def _class_names(directory: Path) -> list[str]:
    names = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise NotFoundError(
            f"{directory}: no class sub-folders (expected {directory}/<class name>/<image files>)"
        )
    return names


def _check_test_classes(train: list[str], test: list[str], root: Path) -> None:
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise InvalidInputError(
            f"{root}/test: every class must also be in {root}/train ({', '.join(train)}), "
            f"got extra {', '.join(unknown)}"
        )


def _list_images(
    directory: Path, classes: list[str]
) -> tuple[list[Path], list[int], list[tuple[str, str]]]:
    """(image paths, their labels, (path, reason) of non-PNG/JPEG files), sorted by path."""
    paths, labels, rejected = [], [], []
    for label, name in enumerate(classes):
        class_dir = directory / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or any(
                part.startswith(".") for part in path.relative_to(class_dir).parts
            ):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
            else:
                reason = (
                    f"not a PNG or JPEG file (suffix one of {', '.join(IMAGE_SUFFIXES)} expected)"
                )
                log.warning(
                    "skipping %s: %s", path, reason, extra={"path": str(path), "reason": reason}
                )
                rejected.append((str(path), reason))
    return paths, labels, rejected


def _grey_or_unreadable(path: Path) -> bool:
    """For choosing channels: unreadable files are skipped later, so they do not count as colour."""
    try:
        return is_grey(path)
    except DECODE_ERRORS:
        return True
