"""Reading a model repository's folders as they are now: model folders, version folders, and a
signature of each version's files that tells a rescan whether they changed.

Folders that cannot be a model or a version (a name Triton would not take, `²`, `v2`) are
returned apart with the reason, so that the caller logs them once and serves the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

from stn_serve.contract import CONFIG_FILE, MODEL_FILE, SPEC_FILE, check_name, parse_version
from stn_serve.errors import InvalidInputError

#: (path, why it is left out)
Skipped = tuple[Path, str]
VERSION_NAME_RULE = (
    "a version folder is named by a positive integer in ASCII digits, without leading zeros"
)


def _subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders, by name; hidden ones (an export's staging folder) are not looked at."""
    return sorted(
        entry for entry in folder.iterdir() if not entry.name.startswith(".") and entry.is_dir()
    )


def model_folders(root: Path) -> tuple[dict[str, Path], list[Skipped]]:
    """{model name: folder} of the repository at `root`, and the folders left out."""
    models, skipped = {}, []
    for folder in _subfolders(root):
        try:
            models[check_name(folder.name)] = folder
        except InvalidInputError as error:
            skipped.append((folder, str(error)))
    return models, skipped


def version_folders(model_dir: Path) -> tuple[dict[int, Path], list[Skipped]]:
    """{version: folder} of one model, and the folders left out (`²`, `v2`, `01`)."""
    versions: dict[int, Path] = {}
    skipped = []
    for folder in _subfolders(model_dir):
        version = parse_version(folder.name)
        # model.json names its version, and "01" is not how it writes 1.
        if version is None or str(version) != folder.name:
            skipped.append((folder, VERSION_NAME_RULE))
        else:
            versions[version] = folder
    return versions, skipped


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def version_signature(directory: Path) -> tuple:
    """Size and modification time of a version's files: equal signatures, unchanged files."""
    return tuple(_stat(directory / name) for name in (MODEL_FILE, SPEC_FILE))


def config_signature(model_dir: Path) -> tuple[int, int] | None:
    """Size and modification time of a model's config.pbtxt; None when it has none."""
    return _stat(model_dir / CONFIG_FILE)
