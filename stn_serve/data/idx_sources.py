"""The `mnist` and `fashion-mnist` sources: the four standard IDX files, found on disk.

Where they are looked for, first match wins:
1. `data_dir` (`--data-dir`) when given, and nowhere else;
2. otherwise `$STN_DATA_DIR/<source>` then `$STN_DATA_DIR` when that variable is set,
   then, for fashion-mnist, the Debian package `dataset-fashion-mnist`'s directory.
Each file may be raw or gzip-compressed (`train-images-idx3-ubyte` or `...-ubyte.gz`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from stn_serve.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from stn_serve.data.split import Split, check_split, conform_images
from stn_serve.errors import InvalidInputError, NotFoundError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "STN_DATA_DIR"
#: Where `apt-get install dataset-fashion-mnist` puts the four .gz files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FILE_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxSource:
    """What differs between the IDX-file sources: class names and where to get the files."""

    name: str
    classes: tuple[str, ...]
    how_to_get: str
    debian_package: str | None = None


IDX_SOURCES = {
    "mnist": IdxSource(
        name="mnist",
        classes=tuple(str(d) for d in range(10)),
        how_to_get=(
            "download the four MNIST IDX files (train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
            "from an MNIST mirror"
        ),
    ),
    "fashion-mnist": IdxSource(
        name="fashion-mnist",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        how_to_get=(
            "install them with `apt-get install dataset-fashion-mnist`, or download the four "
            "IDX files from https://github.com/zalandoresearch/fashion-mnist (data/fashion)"
        ),
        debian_package="dataset-fashion-mnist",
    ),
}


def load_idx_split(
    source: str,
    split: str,
    data_dir: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> Split:
    """Load one split of MNIST or Fashion-MNIST from IDX files.

    Args:
        source (str): "mnist" or "fashion-mnist".
        split (str): "train" (60,000 images) or "test" (10,000).
        data_dir (str | Path | None): directory holding the files; see the module docstring for
            where else they are looked for. Default: None.
        image_size ((int, int) | None): resize to (H, W). Default: None, 28×28.
        channels (int | None): 1 or 3. Default: None, 1.

    Returns:
        Split: images Tensor[N, C, H, W] float32 in [0, 1] (bytes / 255), labels Tensor[N] int64.

    Raises:
        NotFoundError: no place holds the split's two files; the message lists every place looked.
        InvalidInputError: a file is corrupt, or images and labels do not match.
    """
    check_split(split)
    spec = IDX_SOURCES[source]
    images_path, labels_path = _find_files(spec, split, data_dir)
    log.info(
        "reading %s %s split",
        source,
        split,
        extra={"images": str(images_path), "labels": str(labels_path)},
    )
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(labels) != len(images):
        raise InvalidInputError(
            f"{labels_path.name}: one label per image of {images_path.name} expected "
            f"({len(images)}), got {len(labels)}"
        )
    if len(labels) and labels.max() >= len(spec.classes):
        raise InvalidInputError(
            f"{labels_path.name}: labels 0..{len(spec.classes) - 1} expected, "
            f"got {int(labels.max())}"
        )
    pixels = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)  # (N, 1, H, W)
    return Split(
        images=conform_images(pixels, image_size, channels),
        labels=torch.from_numpy(labels).long(),
        classes=list(spec.classes),
        source=source,
    )


def _places(spec: IdxSource, data_dir: str | Path | None) -> list[tuple[Path, str]]:
    """(directory, where it came from) in the order they are searched."""
    if data_dir is not None:
        return [(Path(data_dir), "data_dir")]
    places = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        places += [
            (Path(env) / spec.name, f"${DATA_DIR_ENV}/{spec.name}"),
            (Path(env), f"${DATA_DIR_ENV}"),
        ]
    if spec.debian_package:
        places.append((DEBIAN_FASHION_MNIST_DIR, f"Debian package {spec.debian_package}"))
    return places


def _find_files(spec: IdxSource, split: str, data_dir: str | Path | None) -> tuple[Path, Path]:
    wanted = FILE_NAMES[split]
    looked = []
    for directory, origin in _places(spec, data_dir):
        if not directory.is_dir():
            looked.append(f"{directory} ({origin}): no such directory")
            continue
        found = [_existing(directory, name) for name in wanted]
        if all(found):
            return found[0], found[1]
        missing = ", ".join(f"{name}[.gz]" for name, path in zip(wanted, found) if path is None)
        looked.append(f"{directory} ({origin}): missing {missing}")
    if not looked:
        looked.append(f"nowhere (no data_dir given and ${DATA_DIR_ENV} not set)")
    raise NotFoundError(
        f"{spec.name}: the {split} split's IDX files ({wanted[0]} and {wanted[1]}, raw or .gz) "
        f"were not found. Looked in: {'; '.join(looked)}. To get them: {spec.how_to_get}; "
        "then pass --data-dir DIR or "
        f"set {DATA_DIR_ENV}=DIR."
    )


def _existing(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None
