"""Batches for training and evaluation: a distorted copy of a split, re-drawn each epoch.

Data stay in the main process (num_workers=0 by default): the whole split is one tensor in
memory, so fetching an item is indexing, and worker processes would only add start-up and
copying.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from stn_serve.data.distortions import distort_with_pose
from stn_serve.data.split import Split, as_integer
from stn_serve.errors import InvalidInputError


class DistortedDataset(Dataset):
    """A split with one of the paper's distortions applied, re-drawn by `set_epoch`.

    Epoch e uses seed `base_seed + e`, so training sees fresh distortions every epoch and a
    resumed run sees the same ones as an uninterrupted run. For a test set, build it once and
    never call `set_epoch`.

    Args:
        split (Split): images Tensor[N, C, H, W] and labels Tensor[N].
        kind (str): one of `stn_serve.data.DISTORTIONS`.
        base_seed (int): seed of epoch 0.
        clutter_from (Tensor[M, C, H_c, W_c] | None): TC's clutter pool (see `distort`).
            Default: None, meaning the split's own images.

    Attributes:
        images (Tensor[N, C, H', W']): the current epoch's distorted images.
        poses (Tensor[N, 3, 3]): the transform each went through (see `distort_with_pose`).
        labels (Tensor[N]): int64.
        classes (list[str]): the split's class names.
        epoch (int): the epoch `images` were drawn for.
    """

    def __init__(
        self, split: Split, kind: str, base_seed: int, clutter_from: torch.Tensor | None = None
    ) -> None:
        self.split = split
        self.kind = kind
        self.base_seed = as_integer("base_seed", base_seed)
        self.clutter_from = clutter_from
        self.labels = split.labels
        self.classes = split.classes
        self.epoch = 0
        self.images, self.poses = distort_with_pose(
            split.images, kind, self.base_seed, clutter_from
        )

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the distortions with seed `base_seed + epoch` (nothing to do if unchanged)."""
        epoch = as_integer("epoch", epoch)
        if epoch != self.epoch:
            self.images, self.poses = distort_with_pose(
                self.split.images, self.kind, self.base_seed + epoch, self.clutter_from
            )
            self.epoch = epoch

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H', W') of every item."""
        return tuple(self.images.shape[1:])

    @property
    def source_size(self) -> tuple[int, int]:
        """(H, W) of the images before distortion."""
        return tuple(self.split.images.shape[-2:])

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image Tensor[C, H', W'], label Tensor[] int64, pose Tensor[3, 3])."""
        return self.images[index], self.labels[index], self.poses[index]


class EpochShuffleSampler(Sampler[int]):
    """Single-process shuffling whose order depends only on (seed, epoch), like DistributedSampler.

    A resumed run therefore visits batches in the same order as an uninterrupted one.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = as_integer("seed", seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = as_integer("epoch", epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def make_loader(
    dataset: DistortedDataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over `dataset` yielding (images Tensor[B, C, H', W'], labels Tensor[B],
    poses Tensor[B, 3, 3]).

    Args:
        dataset (DistortedDataset): what to batch.
        batch_size (int): images per batch (per process when distributed).
        shuffle (bool): visit items in a random order that depends on (seed, epoch). Default: False.
        seed (int): shuffling seed. Default: 0.
        distributed (bool): shard with `DistributedSampler` over the initialised
            `torch.distributed` process group (each process gets 1/world_size of the items).
            Default: False.
        drop_last (bool): drop the last incomplete batch (and, distributed, the uneven tail).
            Default: False.
        num_workers (int): loader worker processes. Default: 0 (main process). With workers,
            call `set_epoch` before each epoch's iteration starts; workers are not persistent,
            so each epoch's workers see the new images.

    Call `set_epoch(loader, epoch)` at the start of every epoch.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    if distributed:
        sampler: Sampler[int] | None = DistributedSampler(
            dataset, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    elif shuffle:
        sampler = EpochShuffleSampler(len(dataset), seed)
    else:
        sampler = None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Start epoch `epoch`: re-distort the loader's dataset and re-seed its sampler's order."""
    loader.dataset.set_epoch(epoch)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
