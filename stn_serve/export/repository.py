"""Writing into the model repository: `<repository>/<name>/<version>/`, numeric versions as in
Triton's model repository.

A version appears whole or not at all: its files go to a hidden staging folder next to it, which
is then renamed to the version number (a rename within one file system is atomic). A reader never
sees a half-written version, and a failed export leaves the repository as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from stn_serve.contract import is_version_directory
from stn_serve.errors import InvalidInputError


def existing_versions(repository: Path, name: str) -> list[int]:
    """The numeric version folders of model `name`, ascending (none when it does not exist)."""
    folder = Path(repository) / name
    if not folder.is_dir():
        return []
    return sorted(int(entry.name) for entry in filter(is_version_directory, folder.iterdir()))


def choose_version(repository: Path, name: str, version: int | None) -> int:
    """`version` if it is a free positive integer, or the next free one (highest + 1) for None.

    Raises:
        InvalidInputError: the version is not a positive integer, or already exists.
    """
    existing = existing_versions(repository, name)
    if version is None:
        return (existing[-1] + 1) if existing else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError(f"version must be a positive integer, got {version!r}")
    if version in existing:
        raise InvalidInputError(
            f"version {version} of model {name!r} already exists in {Path(repository) / name}; "
            f"choose another version or leave it out for the next free one ({existing[-1] + 1})"
        )
    return version


def publish(repository: Path, name: str, version: int, files: dict[str, bytes]) -> Path:
    """Write `files` ({file name: content}) as `<repository>/<name>/<version>/` in one step.

    Returns:
        The version folder.

    Raises:
        InvalidInputError: the version folder appeared meanwhile.
    """
    model_folder = Path(repository) / name
    target = model_folder / str(version)
    created_model_folder = not model_folder.exists()
    model_folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=model_folder))
    try:
        for file_name, content in files.items():
            (staging / file_name).write_bytes(content)
        os.chmod(staging, 0o755)
        try:
            # rename() refuses a non-empty target, so a concurrent export of the same version
            # cannot be overwritten.
            os.rename(staging, target)
        except OSError as error:
            raise InvalidInputError(f"cannot create {target}: {error.strerror}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_model_folder and not any(model_folder.iterdir()):
            model_folder.rmdir()
        raise
    return target
