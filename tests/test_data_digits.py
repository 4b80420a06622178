"""The embedded `digits` source and the stratified split behind it."""

import numpy as np
import pytest
import torch

from stn_serve.data import SOURCES, load_split
from stn_serve.data.split import stratified_split
from stn_serve.errors import InvalidInputError


@pytest.fixture(scope="module")
def digits():
    return {split: load_split("digits", split) for split in ("train", "test")}


def test_split_sizes_and_contents(digits):
    train, test = digits["train"], digits["test"]
    assert len(train) + len(test) == 1797
    assert len(test) == 359
    for split in (train, test):
        assert split.images.shape[1:] == (1, 28, 28) and split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(split),)
        assert split.images.min() == 0.0 and split.images.max() == 1.0
        assert split.classes == [str(d) for d in range(10)]
        assert split.source == "digits" and split.skipped == []
        assert set(split.labels.tolist()) == set(range(10))


def test_digits_sit_in_a_20x20_box(digits):
    images = digits["train"].images
    assert images[..., :4, :].abs().sum() == 0 and images[..., 24:, :].abs().sum() == 0
    assert images[..., :4].abs().sum() == 0 and images[..., 24:].abs().sum() == 0
    assert images[..., 4:24, 4:24].flatten(1).sum(1).min() > 0


def test_split_is_deterministic(digits):
    again = load_split("digits", "test")
    assert torch.equal(again.images, digits["test"].images)
    assert torch.equal(again.labels, digits["test"].labels)


def test_requested_size_and_channels():
    split = load_split("digits", "test", image_size=(32, 40), channels=3)
    assert split.images.shape == (359, 3, 32, 40)
    assert torch.equal(split.images[:, 0], split.images[:, 2])


def test_stratified_split_partitions_each_class():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 1, 1, 0]
    assert np.array_equal(stratified_split(labels, 0.2, seed=0)[1], test)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], test)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"source": "imagenet", "split": "train"},
            r"data source must be one of .*digits.*, got 'imagenet'",
        ),
        ({"source": "digits", "split": "val"}, r"split must be one of train, test, got 'val'"),
        ({"source": "digits", "split": "test", "channels": 2}, r"channels must be 1 or 3, got 2"),
        (
            {"source": "digits", "split": "test", "image_size": (28,)},
            r"image_size must be two positive integers",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        load_split(**kwargs)


def test_sources_lists_digits_first():
    assert SOURCES[0] == "digits"
