"""Splitting one batch job over many machines with no coordination: `--shard INDEX/COUNT`.

A file belongs to shard `int.from_bytes(sha256(os.fsencode(key))[:8], "big") % COUNT`, where
`key` is its path relative to the input root. Every machine that lists the same input computes
the same answer, so shards never overlap and together hold every file; a Kubernetes Indexed Job
(deploy/k8s/batch-job.yaml) gives each pod its INDEX.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from stn_serve.batch.inputs import InputFile
from stn_serve.errors import InvalidInputError, NotFoundError

#: Written into a shard's output folder; `stn-serve merge` reads it.
SHARD_FILE = "shard.json"


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based, as Kubernetes' JOB_COMPLETION_INDEX) of `count`."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InvalidInputError(
                f"a shard is INDEX/COUNT with 0 <= INDEX < COUNT, got {self.index}/{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """ "3/8" -> Shard(3, 8)."""
        index, slash, count = text.partition("/")
        if not (slash and index.strip().isdigit() and count.strip().isdigit()):
            raise InvalidInputError(f"a shard is INDEX/COUNT such as 0/8, got {text!r}")
        return cls(int(index), int(count))

    def holds(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    def select(self, inputs: Iterable[InputFile]) -> Iterator[InputFile]:
        return (file for file in inputs if self.holds(file.key))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def write(self, out_dir: Path, source: str) -> None:
        """Record which shard `out_dir` holds (refusing to mix two shards in one folder)."""
        path = out_dir / SHARD_FILE
        if path.exists():
            recorded = read_shard(out_dir)
            if recorded != self:
                raise InvalidInputError(
                    f"{out_dir} holds shard {recorded}, not {self}: give each shard its own --out"
                )
            return
        path.write_text(json.dumps({"index": self.index, "count": self.count, "input": source}))


def shard_of(key: str, count: int) -> int:
    """The shard (0 .. count-1) the file with relative path `key` belongs to."""
    digest = hashlib.sha256(os.fsencode(key)).digest()
    return int.from_bytes(digest[:8], "big") % count


def read_shard(out_dir: Path) -> Shard:
    """The shard a `batch --shard` output folder holds."""
    path = out_dir / SHARD_FILE
    try:
        recorded = json.loads(path.read_text())
        return Shard(int(recorded["index"]), int(recorded["count"]))
    except FileNotFoundError:
        raise NotFoundError(
            f"{out_dir} has no {SHARD_FILE}: it is not the output of `stn-serve batch --shard`"
        ) from None
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidInputError(f"{path} is not a shard description: {error}") from None
