"""Finding a batch job's input images lazily, so a folder of millions never sits in memory."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stn_serve.errors import NotFoundError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """An input image: `key` is its path relative to the input root (POSIX separators), which
    names it in predictions.jsonl and names its crop; `path` is where to read it."""

    key: str
    path: Path


def glob_root(pattern: str) -> Path:
    """The folder a glob pattern starts from: its leading components without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_MAGIC & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk_sorted(root: Path) -> Iterator[Path]:
    """Image files under `root`, depth first, in name order within each folder."""
    with os.scandir(root) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir():
            yield from _walk_sorted(Path(entry.path))
        elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            yield Path(entry.path)


def iter_inputs(source: str) -> Iterator[InputFile]:
    """Every image `source` names: a folder (recursively, files with an image suffix) or a glob
    pattern (every matching file, `**` recursive). Raises NotFoundError when `source` is neither
    a folder nor a pattern; a pattern that matches nothing yields nothing."""
    if Path(source).is_dir():
        root = Path(source)
        paths = _walk_sorted(root)
    elif _GLOB_MAGIC & set(source):
        root = glob_root(source)
        paths = (Path(p) for p in glob.iglob(source, recursive=True) if os.path.isfile(p))
    elif Path(source).is_file():
        root = Path(source).parent
        paths = iter([Path(source)])
    else:
        raise NotFoundError(f"input {source!r} is not a folder, a file or a glob pattern")
    for path in paths:
        yield InputFile(key=path.relative_to(root).as_posix(), path=path)
