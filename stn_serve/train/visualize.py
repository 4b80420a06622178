"""The crops figure for any checkpoint: test images of its data beside the model's crops."""

from __future__ import annotations

from pathlib import Path

from stn_serve.data import distort, load_split
from stn_serve.errors import InvalidInputError
from stn_serve.train.checkpoint import load_checkpoint
from stn_serve.train.datasets import TEST_DISTORTION_SEED
from stn_serve.train.plots import plot_crops


def visualize_checkpoint(
    path: str | Path,
    out: str | Path | None = None,
    count: int = 16,
    data: str | None = None,
    data_dir: str | None = None,
    distortion: str | None = None,
) -> Path:
    """Write the crops grid of the first `count` test images; returns the PNG's path.

    Data settings left as None come from the checkpoint's training settings; the test images
    get the same distortions as in training's test set.
    """
    if count < 1:
        raise InvalidInputError(f"count must be >= 1, got {count}")
    checkpoint = load_checkpoint(path)
    trained = checkpoint.train_config or {}
    data = data or trained.get("data")
    if data is None:
        raise InvalidInputError(
            f"checkpoint {checkpoint.path} does not say what data it was trained on: pass --data"
        )
    image_size = trained.get("image_size")
    split = load_split(
        data,
        "test",
        data_dir=data_dir or trained.get("data_dir"),
        image_size=None if image_size is None else tuple(image_size),
        channels=trained.get("channels"),
    )
    # Distort the test set as training did (same limit, same seed): each draw depends on N.
    limit = trained.get("max_test_samples") or len(split)
    kind = distortion or trained.get("distortion", "none")
    images = distort(split.images[:limit], kind, TEST_DISTORTION_SEED)[:count]
    if list(images.shape[1:]) != list(checkpoint.input_shape):
        raise InvalidInputError(
            f"checkpoint {checkpoint.path} takes images {checkpoint.input_shape}, "
            f"the data gives {list(images.shape[1:])}: check --data and --distortion"
        )
    out = Path(out) if out is not None else Path(checkpoint.path).with_name("crops.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    return plot_crops(
        checkpoint.build_model(), images, split.labels[:count], checkpoint.labels, out
    )
