"""The model repository's layout, as Triton lays it out: `<root>/<name>/<version>/` with
`model.onnx` and `model.json` in each version folder, versions positive integers, and Triton's
model configuration `<root>/<name>/config.pbtxt` beside the version folders."""

from __future__ import annotations

import re
from pathlib import Path

from stn_serve.errors import InvalidInputError

MODEL_FILE = "model.onnx"
SPEC_FILE = "model.json"
GRADIENTS_FILE = "gradients.onnx"
CONFIG_FILE = "config.pbtxt"

# A model name is one path component that a URL, a shell and Triton take as it is.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses or misreads.
_VERSION = re.compile(r"^[0-9]{1,18}$")


def check_name(name: str) -> str:
    """`name` if it can name a model folder, else InvalidInputError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidInputError(
            f"model name must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or "
            f"digit, got {name!r}"
        )
    return name


def parse_version(text: str) -> int | None:
    """The positive integer a version folder name or version string holds, or None when it holds
    none (empty, signs, spaces, non-ASCII digits, zero)."""
    if not _VERSION.match(text):
        return None
    return int(text) or None


def is_version_directory(path: Path) -> bool:
    """Whether `path` is a version folder of a model: a directory named by a positive integer."""
    return parse_version(path.name) is not None and path.is_dir()
