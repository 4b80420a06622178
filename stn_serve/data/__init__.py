"""Image sources and the STN paper's distortions: everything training reads its data through.

- `load_split(source, split, ...) -> Split`: images Tensor[N, C, H, W] in [0, 1] and labels.
- `distort(images, kind, seed)`: the paper's R / RTS / P / E / TC variants, reproducible by seed;
  `distort_with_pose` also returns the transform each image went through.
- `DistortedDataset`, `make_loader`, `set_epoch`: batches, re-distorted each epoch.
"""

from stn_serve.data.distortions import (
    DISTORTIONS,
    Distorted,
    distort,
    distort_with_pose,
    distorted_size,
)
from stn_serve.data.loader import DistortedDataset, EpochShuffleSampler, make_loader, set_epoch
from stn_serve.data.sources import SOURCES, load_split
from stn_serve.data.split import SPLITS, Split

__all__ = [
    "DISTORTIONS",
    "SOURCES",
    "SPLITS",
    "Distorted",
    "DistortedDataset",
    "EpochShuffleSampler",
    "Split",
    "distort",
    "distort_with_pose",
    "distorted_size",
    "load_split",
    "make_loader",
    "set_epoch",
]
