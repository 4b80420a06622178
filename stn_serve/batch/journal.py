"""predictions.jsonl and failures.jsonl: one JSON object per line, appended and flushed as a job
goes, so an interrupted job loses at most the line being written and a rerun resumes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def done_keys(path: Path) -> set[str]:
    """The `file` keys already in a predictions.jsonl (empty when it does not exist). A line cut
    short by an interrupted job is ignored, so that file is predicted again."""
    if not path.exists():
        return set()
    keys = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                keys.add(json.loads(line)["file"])
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning(
                    "ignoring an unreadable line", extra={"path": str(path), "line": number}
                )
    return keys


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
        self._file: IO[str] = path.open("a" if append else "w", encoding="utf-8")
        if cut_short:
            # Start on a fresh line so the next record is not glued to a half-written one.
            self._file.write("\n")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
