"""Training and serving decode an image to the same pixels (stn_serve.imaging is shared)."""

import io

import numpy as np
import pytest
from PIL import Image

from stn_serve.data import load_split
from stn_serve.imaging import decode_encoded


def _png(image: Image.Image, **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def _rotated_jpeg(pixels: np.ndarray) -> bytes:
    """A JPEG whose EXIF says 'rotate 90° clockwise to display' (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "encoded, channels",
    [
        (_png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 23, 3), np.uint8))), 1),
        (_png(Image.fromarray(np.random.default_rng(1).integers(0, 256, (19, 41, 3), np.uint8))), 3),
        (_png(Image.fromarray(np.random.default_rng(2).integers(0, 65536, (30, 30), np.uint16))), 1),
        (_rotated_jpeg(np.random.default_rng(3).integers(0, 256, (20, 44), np.uint8)), 1),
    ],
    ids=["rgb-to-grey", "rgb", "grey-16bit", "jpeg-exif-rotated"],
)
def test_training_and_serving_decode_agree(tmp_path, encoded, channels):
    for split in ("train", "test"):
        folder = tmp_path / split / "only"
        folder.mkdir(parents=True)
        (folder / "image.png").write_bytes(encoded)

    trained_on = load_split("folder", "test", data_dir=tmp_path, image_size=(28, 28), channels=channels)
    served = decode_encoded(encoded, (channels, 28, 28), "image 0")

    assert served.shape == (channels, 28, 28) and served.dtype == np.float32
    np.testing.assert_array_equal(trained_on.images[0].numpy(), served)


def test_exif_orientation_is_applied():
    # 20 rows x 44 columns stored; displayed after a quarter turn: 44 rows x 20 columns.
    pixels = np.zeros((20, 44), np.uint8)
    pixels[:, :22] = 255  # the left half is white
    served = decode_encoded(_rotated_jpeg(pixels), (1, 44, 20), "image 0")[0]
    # Orientation 6 turns the stored left half into the displayed top half.
    assert served[:22].mean() > 0.9 and served[22:].mean() < 0.1
