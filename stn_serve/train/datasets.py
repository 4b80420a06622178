"""The three image sets of a run: training (re-distorted each epoch), validation and test.

Validation is held out from the source's training split; validation and test images are
distorted once with fixed seeds that do not depend on the training seed, so runs with different
models or seeds are scored on the very same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stn_serve.data import DistortedDataset, Split, load_split
from stn_serve.errors import InvalidInputError
from stn_serve.train.config import TrainConfig

VAL_SPLIT_SEED = 0
VAL_DISTORTION_SEED = 1
TEST_DISTORTION_SEED = 2
#: Training seeds are spread apart so that seed s, epoch e never repeats seed s + 1, epoch e - 1.
TRAIN_SEED_STRIDE = 100_003


@dataclass
class RunData:
    """train: re-distorted by `set_epoch`; val and test: fixed; classes: label names."""

    train: DistortedDataset
    val: DistortedDataset
    test: DistortedDataset
    classes: list[str]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the model takes: the distorted size."""
        return self.test.image_shape

    @property
    def source_size(self) -> tuple[int, int]:
        """(H, W) of the undistorted images."""
        return self.test.source_size


def _subset(split: Split, index) -> Split:
    return Split(split.images[index], split.labels[index], split.classes, split.source)


def _first(split: Split, limit: int | None) -> Split:
    if limit is None or limit >= len(split):
        return split
    if limit < 1:
        raise InvalidInputError(f"sample limits must be >= 1, got {limit}")
    return _subset(split, slice(0, limit))


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held-out) with round(fraction * N) random images held out (at least one each side)."""
    if not 0.0 < fraction < 1.0:
        raise InvalidInputError(f"val_fraction must be in (0, 1), got {fraction}")
    if len(split) < 2:
        raise InvalidInputError(
            f"need at least 2 training images to hold out validation, got {len(split)}"
        )
    count = min(max(1, round(fraction * len(split))), len(split) - 1)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return _subset(split, order[count:].sort().values), _subset(split, order[:count].sort().values)


def _load(config: TrainConfig, name: str) -> Split:
    return load_split(
        config.data,
        name,
        data_dir=config.data_dir,
        image_size=None if config.image_size is None else tuple(config.image_size),
        channels=config.channels,
    )


def load_test_set(config: TrainConfig) -> DistortedDataset:
    """The run's test set alone: the same images and distortions `load_run_data` gives."""
    test = _first(_load(config, "test"), config.max_test_samples)
    return DistortedDataset(test, config.distortion, TEST_DISTORTION_SEED)


def load_run_data(config: TrainConfig) -> RunData:
    """Load, limit, split and distort the source named by `config.data`."""
    train, val = hold_out(
        _first(_load(config, "train"), config.max_train_samples),
        config.val_fraction,
        VAL_SPLIT_SEED,
    )
    # TC clutter for training comes from the training images only, never from test images.
    return RunData(
        train=DistortedDataset(train, config.distortion, config.seed * TRAIN_SEED_STRIDE),
        val=DistortedDataset(val, config.distortion, VAL_DISTORTION_SEED),
        test=load_test_set(config),
        classes=list(train.classes),
    )


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images (Tensor[N, C, H, W]); std is floored to stay usable."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
