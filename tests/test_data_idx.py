"""IDX reading and the mnist / fashion-mnist sources, on small files the tests write."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from stn_serve.data import idx_sources, load_split
from stn_serve.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from stn_serve.errors import InvalidInputError, NotFoundError


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_split(
    directory: Path, prefix: str, n: int, gz: bool, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    write(directory / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
    write(directory / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
    return images, labels


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array,code",
    [
        (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08),
        (np.array([-3, 0, 5], dtype=np.int8), 0x09),
        (np.array([[-300, 7]], dtype=np.int16), 0x0B),
        (np.array([1 << 20, -5], dtype=np.int32), 0x0C),
        (np.array([0.5, -1.25], dtype=np.float32), 0x0D),
        (np.array([[1e-300]], dtype=np.float64), 0x0E),
    ],
)
def test_reads_every_dtype_raw_and_gz(tmp_path, suffix, array, code):
    path = write(tmp_path / f"values-idx{suffix}", idx_bytes(array, code))
    out = read_idx(path)
    assert out.dtype == array.dtype and np.array_equal(out, array)


def test_wrong_magic_names_file_and_both_numbers(tmp_path):
    path = write(
        tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((2, 28), dtype=np.uint8))
    )
    with pytest.raises(
        InvalidInputError,
        match=r"^train-images-idx3-ubyte.gz: magic number 0x00000803 expected, got 0x00000802$",
    ):
        read_idx(path, IMAGES_MAGIC)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x00\x00", r"labels-idx1-ubyte: file is 2 bytes, too short for an IDX magic number"),
        (b"\x1f\x8b\x08\x01" + bytes(8), r"labels-idx1-ubyte: not an IDX file: .* got 0x1F8B0801"),
        (
            bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00",
            r"IDX dtype code one of 0x08, .* expected, got 0x07",
        ),
        (
            bytes([0, 0, 0x08, 2]) + struct.pack(">I", 3),
            r"truncated header: 12 bytes expected for 2 dimensions, got 8",
        ),
        (
            idx_bytes(np.zeros(10, dtype=np.uint8))[:-3],
            r"labels-idx1-ubyte: truncated: 18 bytes expected for 10 unsigned byte values, got 15",
        ),
        (
            idx_bytes(np.zeros(10, dtype=np.uint8)) + b"\x00",
            r"trailing bytes: 18 bytes expected .* got 19",
        ),
    ],
    ids=["short", "not-idx", "dtype-code", "short-header", "truncated", "trailing"],
)
def test_corrupt_files_are_named(tmp_path, data, message):
    path = write(tmp_path / "labels-idx1-ubyte", data)
    with pytest.raises(InvalidInputError, match=message):
        read_idx(path)


def test_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8)))[:-20])
    with pytest.raises(
        InvalidInputError, match=r"^t10k-images-idx3-ubyte.gz: not a readable gzip file"
    ):
        read_idx(path, IMAGES_MAGIC)


def test_missing_file(tmp_path):
    with pytest.raises(NotFoundError, match="no such file"):
        read_idx(tmp_path / "absent-idx1-ubyte", LABELS_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_split_from_data_dir(tmp_path, gz):
    images, labels = write_split(tmp_path, "t10k", 5, gz)
    split = load_split("mnist", "test", data_dir=tmp_path)
    assert split.images.shape == (5, 1, 28, 28) and split.images.dtype == torch.float32
    assert torch.allclose(split.images[:, 0] * 255, torch.from_numpy(images).float())
    assert split.labels.tolist() == labels.tolist() and split.labels.dtype == torch.int64
    assert split.classes == [str(d) for d in range(10)] and split.source == "mnist"


def test_fashion_mnist_from_env_subfolder_with_its_class_names(tmp_path, monkeypatch):
    write_split(tmp_path / "fashion-mnist", "train", 4, gz=True)
    monkeypatch.setenv("STN_DATA_DIR", str(tmp_path))
    split = load_split("fashion-mnist", "train", image_size=(14, 14), channels=3)
    assert split.images.shape == (4, 3, 14, 14)
    assert len(split.classes) == 10
    assert (split.classes[0], split.classes[9]) == ("T-shirt/top", "Ankle boot")


def test_fashion_mnist_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("STN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(idx_sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    with pytest.raises(NotFoundError) as caught:
        load_split("fashion-mnist", "test")
    message = str(caught.value)
    assert (
        f"{tmp_path / 'fashion-mnist'} ($STN_DATA_DIR/fashion-mnist): no such directory" in message
    )
    assert (
        f"{tmp_path} ($STN_DATA_DIR): "
        "missing t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]" in message
    )
    assert (
        f"{tmp_path / 'debian'} (Debian package dataset-fashion-mnist): no such directory"
        in message
    )
    assert "apt-get install dataset-fashion-mnist" in message


def test_explicit_data_dir_is_the_only_place(tmp_path, monkeypatch):
    write_split(tmp_path / "env", "train", 3, gz=False)
    monkeypatch.setenv("STN_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "given").mkdir()
    write(
        tmp_path / "given" / "train-images-idx3-ubyte",
        idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)),
    )
    with pytest.raises(
        NotFoundError,
        match=r"Looked in: .*given \(data_dir\): missing train-labels-idx1-ubyte\[.gz\]\. ",
    ):
        load_split("mnist", "train", data_dir=tmp_path / "given")


def test_label_count_must_match_images(tmp_path):
    write_split(tmp_path, "train", 3, gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(2, dtype=np.uint8)))
    with pytest.raises(
        InvalidInputError,
        match=r"train-labels-idx1-ubyte: one label per image of train-images-idx3-ubyte "
        r"expected \(3\), got 2",
    ):
        load_split("mnist", "train", data_dir=tmp_path)


def test_labels_must_name_a_class(tmp_path):
    write_split(tmp_path, "train", 2, gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.array([1, 10], dtype=np.uint8)))
    with pytest.raises(InvalidInputError, match=r"labels 0..9 expected, got 10"):
        load_split("mnist", "train", data_dir=tmp_path)


def test_labels_file_with_images_magic_is_rejected(tmp_path):
    write_split(tmp_path, "train", 2, gz=True)
    write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8)))
    with pytest.raises(
        InvalidInputError,
        match=r"train-labels-idx1-ubyte.gz: magic number 0x00000801 expected, got 0x00000803",
    ):
        load_split("mnist", "train", data_dir=tmp_path)


@pytest.mark.skipif(
    not (idx_sources.DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_debian_fashion_mnist_test_split(monkeypatch):
    monkeypatch.delenv("STN_DATA_DIR", raising=False)
    split = load_split("fashion-mnist", "test")
    assert split.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(split.labels).tolist() == [1000] * 10
    assert split.images.min() == 0.0 and split.images.max() == 1.0
