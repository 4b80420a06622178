"""DistortedDataset, make_loader and set_epoch: per-epoch redistortion and reproducible order."""

import pytest
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from stn_serve.data import DistortedDataset, Split, distort, make_loader, set_epoch
from stn_serve.errors import InvalidInputError


def small_split(n: int = 10) -> Split:
    images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return Split(images=images, labels=torch.arange(n) % 3, classes=["a", "b", "c"], source="test")


def test_epochs_redistort_with_base_seed_plus_epoch():
    split = small_split()
    dataset = DistortedDataset(split, "RTS", base_seed=100)
    assert dataset.image_shape == (1, 42, 42)
    assert torch.equal(dataset.images, distort(split.images, "RTS", 100))
    dataset.set_epoch(3)
    assert torch.equal(dataset.images, distort(split.images, "RTS", 103))
    dataset.set_epoch(0)
    assert torch.equal(dataset.images, distort(split.images, "RTS", 100))
    image, label, pose = dataset[4]
    assert image.shape == (1, 42, 42) and label.item() == 1 and pose.shape == (3, 3)


def test_loader_batches_and_epoch_order():
    loader = make_loader(
        DistortedDataset(small_split(), "R", 0), batch_size=4, shuffle=True, seed=7
    )
    batches = list(loader)
    assert [len(labels) for _, labels, _ in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 1, 28, 28)
    order = torch.cat([labels for _, labels, _ in batches])
    set_epoch(loader, 0)
    assert torch.equal(torch.cat([labels for _, labels, _ in loader]), order)
    first_images = torch.cat([images for images, _, _ in loader])
    set_epoch(loader, 1)
    assert not torch.equal(torch.cat([images for images, _, _ in loader]), first_images)
    fresh = make_loader(DistortedDataset(small_split(), "R", 0), batch_size=4, shuffle=True, seed=7)
    set_epoch(fresh, 1)
    assert torch.equal(
        torch.cat([images for images, _, _ in fresh]),
        torch.cat([images for images, _, _ in loader]),
    )


def test_unshuffled_loader_keeps_order():
    loader = make_loader(DistortedDataset(small_split(), "none", 0), batch_size=3, drop_last=True)
    assert torch.equal(torch.cat([labels for _, labels, _ in loader]), torch.arange(9) % 3)


def test_distributed_loader_uses_distributed_sampler(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        loader = make_loader(
            DistortedDataset(small_split(), "none", 0),
            batch_size=5,
            shuffle=True,
            seed=3,
            distributed=True,
        )
        assert isinstance(loader.sampler, DistributedSampler)
        set_epoch(loader, 2)
        assert loader.sampler.epoch == 2 and loader.dataset.epoch == 2
        assert sorted(torch.cat([labels for _, labels, _ in loader]).tolist()) == sorted(
            (torch.arange(10) % 3).tolist()
        )
    finally:
        dist.destroy_process_group()


def test_batch_size_must_be_positive():
    with pytest.raises(InvalidInputError, match="batch_size must be >= 1, got 0"):
        make_loader(DistortedDataset(small_split(), "none", 0), batch_size=0)
