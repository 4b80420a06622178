"""The `folder` source: the user's own images, grey and RGB, with unreadable files skipped."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stn_serve.data import load_split
from stn_serve.errors import InvalidInputError, NotFoundError


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def grey(value: int, size=(40, 30)) -> Image.Image:
    return Image.new("L", size, value)


def rgb(colour, size=(17, 23)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_corrupt_and_foreign_files_are_skipped_and_reported(tmp_path, caplog):
    save(tmp_path / "train" / "cat" / "a.png", grey(255))
    save(tmp_path / "train" / "dog" / "b.jpg", grey(0))
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("hello")
    (tmp_path / "train" / "dog" / ".hidden.png").write_bytes(b"")
    save(tmp_path / "test" / "dog" / "c.png", grey(128))
    with caplog.at_level(logging.WARNING, logger="stn_serve.data"):
        split = load_split("folder", "train", data_dir=tmp_path)
    assert split.classes == ["cat", "dog"]
    assert split.labels.tolist() == [0, 1]
    reasons = dict(split.skipped)
    assert set(reasons) == {
        str(tmp_path / "train" / "dog" / "broken.png"),
        str(tmp_path / "train" / "dog" / "notes.txt"),
    }
    assert reasons[str(tmp_path / "train" / "dog" / "broken.png")].startswith("unreadable image: ")
    assert "not a PNG or JPEG file" in reasons[str(tmp_path / "train" / "dog" / "notes.txt")]
    assert str(tmp_path / "train" / "dog" / "broken.png") in caplog.text
    test = load_split("folder", "test", data_dir=tmp_path)
    assert test.classes == ["cat", "dog"] and test.labels.tolist() == [1] and test.skipped == []


def test_grey_images_give_one_channel_resized(tmp_path):
    save(tmp_path / "train" / "a" / "white.png", grey(255, (50, 10)))
    save(tmp_path / "train" / "a" / "mid.png", grey(51))
    save(tmp_path / "train" / "b" / "black.jpg", grey(0))
    save(tmp_path / "test" / "b" / "black.jpg", grey(0))
    split = load_split("folder", "train", data_dir=tmp_path)
    assert split.images.shape == (3, 1, 28, 28) and split.images.dtype == torch.float32
    values = {round(float(image.mean()), 3) for image in split.images}
    assert values == {1.0, 0.2, 0.0}


def test_any_colour_image_makes_every_split_rgb(tmp_path):
    save(tmp_path / "train" / "red" / "r.png", rgb((255, 0, 0)))
    save(tmp_path / "train" / "grey" / "g.png", grey(255))
    save(tmp_path / "test" / "grey" / "g2.png", grey(255))
    train = load_split("folder", "train", data_dir=tmp_path, image_size=(8, 12))
    test = load_split("folder", "test", data_dir=tmp_path, image_size=(8, 12))
    assert train.images.shape == (2, 3, 8, 12) and test.images.shape == (1, 3, 8, 12)
    red = train.images[train.labels.tolist().index(train.classes.index("red"))]
    assert torch.allclose(red.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(test.images, torch.ones(1, 3, 8, 12))


def test_requested_channels_convert(tmp_path):
    save(tmp_path / "train" / "c" / "blue.png", rgb((0, 0, 255)))
    save(tmp_path / "train" / "c" / "rgba.png", Image.new("RGBA", (9, 9), (0, 255, 0, 10)))
    (tmp_path / "test" / "c").mkdir(parents=True)
    split = load_split("folder", "train", data_dir=tmp_path, channels=1)
    assert split.images.shape == (2, 1, 28, 28)
    # ITU-R 601 luma: blue 0.114, green 0.587 (alpha dropped).
    assert sorted(round(float(i.mean()), 2) for i in split.images) == [0.11, 0.59]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    save(
        tmp_path / "train" / "c" / "deep.png",
        Image.fromarray(np.full((6, 6), 32768, dtype=np.uint16)),
    )
    (tmp_path / "test" / "c").mkdir(parents=True)
    split = load_split("folder", "train", data_dir=tmp_path)
    assert split.images.shape[1] == 1
    assert split.images.mean().item() == pytest.approx(32768 / 65535, abs=1e-3)


def test_flat_layout_split_is_stratified_and_deterministic(tmp_path):
    for name, count in (("x", 10), ("y", 5)):
        for i in range(count):
            save(tmp_path / name / "sub" / f"{i:02d}.png", grey(i * 20 + (name == "y")))
    train = load_split("folder", "train", data_dir=tmp_path)
    test = load_split("folder", "test", data_dir=tmp_path)
    assert torch.bincount(test.labels).tolist() == [2, 1]
    assert torch.bincount(train.labels).tolist() == [8, 4]
    seen = {float(i.mean()) for i in torch.cat([train.images, test.images])}
    assert len(seen) == 15, "every image lands in exactly one split"
    assert torch.equal(load_split("folder", "test", data_dir=tmp_path).images, test.images)


def test_test_classes_must_exist_in_train(tmp_path):
    save(tmp_path / "train" / "a" / "1.png", grey(1))
    save(tmp_path / "test" / "b" / "1.png", grey(1))
    with pytest.raises(
        InvalidInputError, match=r"test: every class must also be in .*train \(a\), got extra b"
    ):
        load_split("folder", "test", data_dir=tmp_path)


def test_split_with_only_unreadable_files_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(
        InvalidInputError,
        match=r"no readable PNG/JPEG image in the train split \(skipped 1 files\)",
    ):
        load_split("folder", "train", data_dir=tmp_path)


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda root: None, InvalidInputError, r"the folder source needs data_dir"),
        (lambda root: root / "absent", NotFoundError, r"absent: no such directory"),
        (lambda root: root, NotFoundError, r"no class sub-folders"),
    ],
    ids=["no-dir", "absent", "empty"],
)
def test_where_the_folder_is_wrong(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        load_split("folder", "train", data_dir=make(tmp_path))
