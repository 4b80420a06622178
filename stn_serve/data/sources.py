"""`load_split`: one entry point over every image source, chosen by name (`--data`)."""

from __future__ import annotations

from pathlib import Path

from stn_serve.contract import DATA_SOURCES as SOURCES
from stn_serve.data.digits import load_digits_split
from stn_serve.data.folder import load_folder_split
from stn_serve.data.idx_sources import IDX_SOURCES, load_idx_split
from stn_serve.data.split import Split, check_split
from stn_serve.errors import InvalidInputError


def load_split(
    source: str,
    split: str,
    data_dir: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> Split:
    """Load the "train" or "test" split of an image source.

    Args:
        source (str): one of SOURCES:
            "digits": scikit-learn's handwritten digits, 28×28 grey, shipped with scikit-learn
                (no files needed);
            "mnist", "fashion-mnist": the standard IDX files (raw or .gz) from `data_dir`, else
                `$STN_DATA_DIR`, else (Fashion-MNIST) the Debian package dataset-fashion-mnist;
            "folder": PNG/JPEG images in `data_dir`, one sub-folder per class.
        split (str): "train" or "test".
        data_dir (str | Path | None): where the source's files are. Default: None.
        image_size ((int, int) | None): resize to (H, W). Default: None, the source's own size
            (28×28 for every source; for "folder" the size its images are resized to).
        channels (int | None): 1 (grey) or 3 (RGB). Default: None, the source's own (1, or for
            "folder" 1 when every image is grey, else 3).

    Returns:
        Split: images Tensor[N, C, H, W] float32 in [0, 1], labels Tensor[N] int64, class names,
        and (folder) the files skipped as unreadable.

    Raises:
        InvalidInputError: an unknown source or split, bad size or channels, corrupt files.
        NotFoundError: the source's files are not where it looked (the message lists where).
    """
    check_split(split)
    if source == "digits":
        return load_digits_split(split, image_size, channels)
    if source in IDX_SOURCES:
        return load_idx_split(source, split, data_dir, image_size, channels)
    if source == "folder":
        return load_folder_split(split, data_dir, image_size, channels)
    raise InvalidInputError(f"data source must be one of {', '.join(SOURCES)}, got {source!r}")
