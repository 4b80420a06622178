"""Finding a batch job's input images lazily, so a folder of millions never sits in memory, and
safely, so no folder shape can end the job.

Every folder is walked at most once, by its real identity (device and inode): a symlinked folder
whose target lies inside the input folder, or was already walked, is skipped, so a link to an
ancestor cannot make a loop and no image is found twice. Whatever cannot be listed or read (a
folder without permission, a broken link, a FIFO named `x.png`) becomes an `InputFile` with an
`error`, which the job reports as a failure and goes on. The walk uses a stack, not recursion,
so a tree of any depth is fine.

File names are `str` as Python gives them: bytes that are not UTF-8 are kept as lone surrogates
(PEP 383, `os.fsdecode`), so `os.fsencode(key)` gives the exact bytes back; `printable(key)` shows
them as `\\xNN`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from stn_serve.errors import InvalidInputError, NotFoundError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """An input image: `key` is its path relative to the input root (POSIX separators), which
    names it in predictions.jsonl and names its crop; `path` is where to read it. `error` says why
    it cannot be read when the walk already knows (then it is a failure, never predicted); a
    folder that cannot be listed is an InputFile too, its key ending in "/"."""

    key: str
    path: Path
    error: str | None = None


def printable(key: str) -> str:
    """`key` for a terminal or a picture: bytes that are not UTF-8 shown as `\\xNN`."""
    return os.fsencode(key).decode("utf-8", "backslashreplace")


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def glob_root(pattern: str) -> Path:
    """The folder a glob pattern starts from: its leading components without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_MAGIC & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


class _Walk:
    """Depth-first walk of one input folder, in name order within each folder."""

    def __init__(
        self,
        root: Path,
        follow_symlinks: bool,
        skip: Path | None,
        descend: Callable[[tuple[str, ...]], bool],
    ):
        self.root = root
        self.follow_symlinks = follow_symlinks
        self.descend = descend
        self.real_root = os.path.realpath(root)
        self.skip = skip
        self.walked = {_identity(os.stat(root))}

    def files(self) -> Iterator[tuple[tuple[str, ...], InputFile]]:
        """(relative parts, InputFile) of every image name under the root."""
        # The job's own output folder, when it lies in the input: its crops are no inputs. Looked
        # up when the walk starts, after the job has made it.
        if self.skip is not None and self.skip.is_dir():
            self.walked.add(_identity(os.stat(self.skip)))
        entries, error = self._list(self.root)
        if error:
            raise InvalidInputError(f"cannot list input folder {self.root}: {error}")
        stack = [((), iter(entries))]
        while stack:
            parts, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            here = (*parts, entry.name)
            is_folder, problem = self._kind(entry)
            if is_folder:
                listing = self._enter(entry, here)
                if isinstance(listing, InputFile):
                    yield here, listing
                elif listing is not None:
                    stack.append((here, iter(listing)))
            elif is_image_name(entry.name):
                path = Path(entry.path)
                yield here, InputFile("/".join(here), path, problem)

    @staticmethod
    def _kind(entry: os.DirEntry) -> tuple[bool, str | None]:
        """(whether it is a folder, why a file of that name cannot be read: None when it can)."""
        try:
            if entry.is_dir():
                return True, None
            if entry.is_file():
                return False, None
            if entry.is_symlink():
                return False, "a broken symbolic link (its target does not exist)"
            return False, "not a regular file"
        except OSError as error:  # a link to itself (ELOOP), a name too long, ...
            return False, f"cannot follow it: {error.strerror or error}"

    def _enter(self, entry: os.DirEntry, parts: tuple[str, ...]):
        """The sorted entries of a folder to walk; None to leave it out; an InputFile with an
        error when it cannot be listed."""
        if not self.descend(parts):
            return None
        key = "/".join(parts) + "/"
        try:
            is_link = entry.is_symlink()
            identity = _identity(entry.stat())
        except OSError as error:
            reason = f"cannot read folder: {error.strerror or error}"
            return InputFile(key, Path(entry.path), reason)
        if is_link:
            if not self.follow_symlinks:
                log.info("not following a symlinked folder", extra={"folder": printable(key)})
                return None
            real = os.path.realpath(entry.path)
            if os.path.commonpath([real, self.real_root]) == self.real_root:
                log.info(
                    "skipping a symlinked folder: its target is inside the input folder",
                    extra={"folder": printable(key), "target": printable(real)},
                )
                return None
        if identity in self.walked:
            if is_link:
                log.info(
                    "skipping a symlinked folder walked already", extra={"folder": printable(key)}
                )
            return None
        self.walked.add(identity)
        entries, error = self._list(Path(entry.path))
        if error:
            return InputFile(key, Path(entry.path), f"cannot list folder: {error}")
        return entries

    @staticmethod
    def _list(folder: Path) -> tuple[list[os.DirEntry], str | None]:
        try:
            with os.scandir(folder) as scan:
                return sorted(scan, key=lambda entry: entry.name), None
        except OSError as error:
            return [], error.strerror or str(error)


def _component_matcher(component: str) -> Callable[[str], bool]:
    """Whether one name matches one glob component; like glob, `*` skips names starting with
    "." unless the component itself starts with "."."""
    pattern = re.compile(fnmatch.translate(component))
    hidden_ok = component.startswith(".")
    return lambda name: (hidden_ok or not name.startswith(".")) and bool(pattern.match(name))


class GlobPattern:
    """A glob pattern relative to its root: `*`, `?`, `[...]` within a name, `**` for any number
    of folders (none included), as `glob.glob(recursive=True)` reads it."""

    def __init__(self, relative: str):
        self.components = [c for c in relative.split("/") if c not in ("", ".")]
        self.matchers = [None if c == "**" else _component_matcher(c) for c in self.components]
        self.recursive = "**" in self.components

    def matches(self, parts: tuple[str, ...], start: int = 0) -> bool:
        if start == len(self.matchers):
            return not parts
        matcher = self.matchers[start]
        if matcher is None:
            return any(
                self.matches(parts[skip:], start + 1)
                for skip in range(len(parts) + 1)
                if not any(p.startswith(".") for p in parts[:skip])
            )
        return bool(parts) and matcher(parts[0]) and self.matches(parts[1:], start + 1)

    def may_hold_matches(self, folder: tuple[str, ...]) -> bool:
        """Whether a folder at these relative parts can hold a match (prunes the walk)."""
        return self.recursive or len(folder) < len(self.components)


def iter_inputs(
    source: str, *, follow_symlinks: bool = True, skip: Path | None = None
) -> Iterator[InputFile]:
    """Every image `source` names, in a stable order: a folder (recursively, files with an image
    suffix), a glob pattern (every matching image, `**` recursive; keys relative to the
    pattern's folder) or one file. Found lazily as the result is iterated.

    follow_symlinks: walk symlinked folders (each real folder once, never one inside the input
        folder); False leaves every symlinked folder out.
    skip: a folder to leave out (the job's own output folder).

    Raises NotFoundError at once when `source` is none of these; a pattern that matches nothing
    yields nothing.
    """
    if Path(source).is_dir():
        walk = _Walk(Path(source), follow_symlinks, skip, lambda parts: True)
        return (file for _, file in walk.files())
    if _GLOB_MAGIC & set(source):
        root = glob_root(source)
        pattern = GlobPattern(Path(source).relative_to(root).as_posix())
        if not root.is_dir():
            return iter(())
        walk = _Walk(root, follow_symlinks, skip, pattern.may_hold_matches)
        return (
            file
            for parts, file in walk.files()
            if file.key.endswith("/") or pattern.matches(parts)
        )
    if Path(source).is_file():
        return iter([InputFile(Path(source).name, Path(source))])
    raise NotFoundError(f"input {source!r} is not a folder, a file or a glob pattern")
