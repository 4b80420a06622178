"""The contact sheet: each input beside the spatial transformer's crop of it, with the top class
and its probability. `stn-serve predict --sheet`, `stn-serve batch --sheet` and the demo draw it.
Pillow only (the serving side has no matplotlib)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from stn_serve.batch.inputs import InputFile, printable
from stn_serve.client.results import Prediction
from stn_serve.imaging import DECODE_ERRORS, GREY_MODES, crop_image, pixels_from_image

#: The most images one sheet shows; a batch job's sheet shows its first ones.
MAX_SHEET_IMAGES = 64
PAIRS_PER_ROW = 4
TILE = 96  # pixels of each input and crop box
GAP = 4
CAPTION = 32  # two lines of text under each pair
MARGIN = 12
TITLE = 24
RIGHT, WRONG, TEXT, NOTE = (0, 128, 0), (200, 0, 0), (0, 0, 0), (100, 100, 100)


@dataclass(frozen=True)
class SheetEntry:
    """One input on the sheet.

    name: shown under the pair (a file name, printable).
    image: the input picture, any size and mode.
    crop (ndarray[C, h, w] float32 in [0, 1]): the spatial transformer's crop of it.
    label, probability: the top class and its probability.
    truth: the right label, when known: the caption is green when the top class is it, else red.
    """

    name: str
    image: Image.Image
    crop: np.ndarray
    label: str
    probability: float
    truth: str | None = None


def picture(image: Image.Image) -> Image.Image:
    """An 8-bit picture of `image` that fills a TILE box: shrunk (averaging) when larger, then
    enlarged pixel by pixel, so small inputs show their real pixels."""
    image = ImageOps.exif_transpose(image)
    scale = min(1.0, TILE / image.width, TILE / image.height)
    size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
    channels = 1 if image.mode in GREY_MODES else 3
    small = crop_image(pixels_from_image(image, size, channels))
    return fit(small)


def fit(image: Image.Image) -> Image.Image:
    """`image` enlarged (nearest neighbour) to fill a TILE box, keeping its aspect ratio."""
    scale = min(TILE / image.width, TILE / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.NEAREST)


def _elide(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, its middle replaced by "…" until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        shorter = text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]
        if draw.textlength(shorter, font=font) <= width:
            return shorter
    return "…"


def draw_sheet(entries: list[SheetEntry], path: Path, title: str) -> Path:
    """Write the sheet of `entries` (at most MAX_SHEET_IMAGES) as a PNG at `path`."""
    entries = entries[:MAX_SHEET_IMAGES]
    columns = min(PAIRS_PER_ROW, max(1, len(entries)))
    rows = max(1, math.ceil(len(entries) / columns))
    cell_width, cell_height = 2 * TILE + GAP, TILE + CAPTION
    width = 2 * MARGIN + columns * cell_width + (columns - 1) * MARGIN
    height = 2 * MARGIN + TITLE + rows * cell_height + (rows - 1) * MARGIN
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    title = _elide(draw, title, font, width - 2 * MARGIN)
    draw.text((MARGIN, MARGIN), title, fill=TEXT, font=font)
    for number, entry in enumerate(entries):
        row, column = divmod(number, columns)
        left = MARGIN + column * (cell_width + MARGIN)
        top = MARGIN + TITLE + row * (cell_height + MARGIN)
        tiles = ((0, picture(entry.image)), (TILE + GAP, fit(crop_image(entry.crop))))
        for offset, tile in tiles:
            corner = (left + offset + (TILE - tile.width) // 2, top + (TILE - tile.height) // 2)
            sheet.paste(tile, corner)
        verdict = f"{entry.label}  {entry.probability:.0%}"
        colour = TEXT
        if entry.truth is not None:
            colour = RIGHT if entry.label == entry.truth else WRONG
            verdict += f"  (true {entry.truth})"
        lines = ((verdict, colour), (entry.name, NOTE))
        for line, (text, fill) in enumerate(lines):
            position = (left, top + TILE + 2 + 15 * line)
            draw.text(position, _elide(draw, text, font, cell_width), fill=fill, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


class SheetCollector:
    """Keeps the first MAX_SHEET_IMAGES predicted files of a run, shrunk to their tiles, for
    `draw_sheet`."""

    def __init__(self, path: Path, title: str):
        self.path = path
        self.title = title
        self.entries: list[SheetEntry] = []

    def add(self, file: InputFile, prediction: Prediction) -> None:
        if len(self.entries) >= MAX_SHEET_IMAGES:
            return
        try:
            with Image.open(file.path) as image:
                shown = picture(image)
        except DECODE_ERRORS:
            return  # changed since it was predicted: the sheet is a view, not a record
        best = prediction.top_k[0]
        self.entries.append(
            SheetEntry(printable(file.key), shown, prediction.crop, best.label, best.probability)
        )

    def draw(self) -> Path | None:
        """The sheet's path, or None when nothing was predicted."""
        return draw_sheet(self.entries, self.path, self.title) if self.entries else None
