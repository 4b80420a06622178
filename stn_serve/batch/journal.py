"""predictions.jsonl and failures.jsonl: one JSON object per line, appended and flushed as a job
goes, so an interrupted job loses at most the line being written and a rerun resumes.

Lines are UTF-8. A file name that is not valid UTF-8 (held as lone surrogates, PEP 383) is written
with JSON's `\\udcNN` escapes, so the line stays valid UTF-8 and `os.fsencode(json.loads(line)
["file"])` gives the name's exact bytes back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


def done_keys(path: Path) -> set[str]:
    """The `file` keys already in a predictions.jsonl (empty when it does not exist). A line cut
    short by an interrupted job is ignored, so that file is predicted again."""
    if not path.exists():
        return set()
    keys = set()
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                keys.add(json.loads(line)["file"])
            except (ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError
                log.warning(
                    "ignoring an unreadable line", extra={"path": str(path), "line": number}
                )
    return keys


def json_line(record: dict) -> bytes:
    """One line of UTF-8 JSON; names that are not UTF-8 as `\\udcNN` escapes (see above)."""
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode("ascii")


class JsonLines:
    """Appends JSON objects to a file, one per line, flushing each so it survives a crash."""

    def __init__(self, path: Path, *, append: bool):
        self.path = path
        if append and path.exists() and path.stat().st_size:
            with path.open("rb") as existing:
                existing.seek(-1, 2)
                cut_short = existing.read(1) != b"\n"
        else:
            cut_short = False
        self._file: BinaryIO = path.open("ab" if append else "wb")
        if cut_short:
            # Start on a fresh line so the next record is not glued to a half-written one.
            self._file.write(b"\n")

    def write(self, record: dict) -> None:
        self._file.write(json_line(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
