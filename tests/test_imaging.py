"""Training and serving decode an image to the same pixels (stn_serve.imaging is shared); a
server decodes under limits of memory, a shared budget, its deadline and cancellation."""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from stn_serve.data import load_split
from stn_serve.errors import DeadlineExceededError, InvalidInputError, RequestCancelledError
from stn_serve.imaging import DecodeBudget, DecodeControl, decode_encoded


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


# --- decoding under a server's limits (stn_serve.imaging.DecodeControl) -------------------------


def _encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pixels_as_before(data: bytes, size, channels: int) -> np.ndarray:
    """The decoding steps as they were before the decode limits: the reference that training
    and batch inference must still get, to the bit."""
    height, width = size
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            wide = np.asarray(image, dtype=np.float32) / 65535.0
            plane = np.asarray(Image.fromarray(wide, mode="F").resize((width, height), Image.BILINEAR))
            pixels = np.clip(plane, 0.0, 1.0)[..., None]
            return np.repeat(pixels, channels, axis=-1).transpose(2, 0, 1).copy()
        image = image.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels]).resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
        return pixels.transpose(2, 0, 1).copy()


RNG = np.random.default_rng(7)
MODES = {
    "L": Image.fromarray(RNG.integers(0, 256, (90, 70), np.uint8)),
    "RGB": Image.fromarray(RNG.integers(0, 256, (90, 70, 3), np.uint8)),
    "RGBA": Image.fromarray(RNG.integers(0, 256, (90, 70, 4), np.uint8)),
    "I;16": Image.fromarray(RNG.integers(0, 65536, (90, 70), np.uint16)),
    "P": Image.fromarray(RNG.integers(0, 256, (90, 70), np.uint8)).convert("P"),
    "1": Image.fromarray(RNG.integers(0, 256, (90, 70), np.uint8)).convert("1"),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_decoding_without_a_control_gives_the_same_pixels_as_before(mode, channels):
    data = _encoded(MODES[mode])
    expected = _pixels_as_before(data, (28, 28), channels)
    np.testing.assert_array_equal(decode_encoded(data, (channels, 28, 28), "x"), expected)
    # Within the limits a server's decoding gives the same pixels too.
    control = DecodeControl(64 << 20, DecodeBudget(128 << 20))
    np.testing.assert_array_equal(decode_encoded(data, (channels, 28, 28), "x", control), expected)


PEAK_SCRIPT = r"""
import io, json, sys
from PIL import Image
from stn_serve.imaging import DecodeControl, decode_cost, decode_encoded

def resident(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

found = {}
for mode, channels in json.loads(sys.argv[1]):
    buffer = io.BytesIO()
    Image.new(mode, (1500, 1500)).save(buffer, format="PNG")
    data = buffer.getvalue()
    decode_encoded(data, (channels, 28, 28), "warm-up", DecodeControl(1 << 30))
    base = resident("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak to the current size
    decode_encoded(data, (channels, 28, 28), "x", DecodeControl(1 << 30))
    found[f"{mode}->{channels}"] = (resident("VmHWM") - base, decode_cost(mode, (1500, 1500), channels))
print(json.dumps(found))
"""


def test_decode_cost_covers_the_measured_peak():
    """decode_cost, the estimate the per-image limit and the budget count, against the peak
    memory decoding really takes (in a fresh process: /proc/self/status VmHWM)."""
    cases = [["L", 1], ["L", 3], ["RGB", 1], ["RGB", 3], ["RGBA", 3], ["I;16", 1], ["P", 1]]
    # A fixed mmap threshold: glibc then returns each large block to the system when it is
    # freed, so one decode's peak does not hide in memory an earlier one left behind.
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, json.dumps(cases)],
        capture_output=True, text=True, timeout=300, check=True, env=environment,
    )  # fmt: skip
    for case, (measured, estimated) in json.loads(done.stdout.splitlines()[-1]).items():
        assert measured <= 1.05 * estimated + (2 << 20), (case, measured, estimated)
        assert estimated <= 1.5 * measured + (4 << 20), (case, measured, estimated)


def test_an_image_over_the_per_image_limit_is_refused_before_decoding():
    data = _encoded(Image.new("RGB", (2000, 2000)))
    with pytest.raises(InvalidInputError) as refused:
        decode_encoded(data, (1, 28, 28), "images[3]", DecodeControl(8 << 20))
    assert str(refused.value) == (
        "images[3] (2000x2000 RGB) would take 19.1 MiB to decode; the limit is 8.0 MiB an "
        "image (--max-decode-mb); send it smaller"
    )


def test_decoding_stops_for_a_cancelled_or_late_request():
    data = _encoded(Image.new("L", (64, 64)))
    cancelled = DecodeControl(8 << 20)
    cancelled.cancelled.set()
    with pytest.raises(RequestCancelledError, match="cancelled the request while images.0. decoded"):
        decode_encoded(data, (1, 28, 28), "images[0]", cancelled)
    late = DecodeControl(8 << 20, deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceededError, match="deadline passed while images.0. decoded"):
        decode_encoded(data, (1, 28, 28), "images[0]", late)


def test_a_decode_waits_for_room_in_the_budget_until_its_deadline():
    budget = DecodeBudget(10 << 20)
    data = _encoded(Image.new("L", (2000, 1000)))  # costs 2,000,000 bytes
    holder = DecodeControl(10 << 20, budget)
    with budget.reserved(9 << 20, holder, "another image"):
        waiting = DecodeControl(10 << 20, budget, deadline=time.monotonic() + 0.2)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            decode_encoded(data, (1, 28, 28), "images[0]", waiting)
        assert 0.15 < time.monotonic() - started < 5
        assert budget.held == 9 << 20
    assert budget.held == 0
    decode_encoded(data, (1, 28, 28), "images[0]", DecodeControl(10 << 20, budget))
    assert budget.held == 0


def test_a_large_jpeg_is_decoded_at_reduced_scale_under_a_control():
    """JPEG draft mode: a 4000x3000 photo decodes at 1/8 scale for a 28x28 model, within a limit
    its full size would break, to nearly the pixels of a full decode."""
    rows = np.linspace(0, 255, 3000, dtype=np.float32)[:, None] * np.ones((1, 4000), np.float32)
    photo = _encoded(Image.fromarray(rows.astype(np.uint8)).convert("RGB"), "JPEG", quality=90)
    reduced = decode_encoded(photo, (1, 28, 28), "x", DecodeControl(8 << 20))
    full = decode_encoded(photo, (1, 28, 28), "x")
    assert np.abs(reduced - full).max() < 0.02
    with pytest.raises(InvalidInputError, match="--max-decode-mb"):
        decode_encoded(photo, (1, 28, 28), "x", DecodeControl(1 << 19))  # 500x375 RGB: 0.9 MiB
