"""`stn-serve merge`: the output folders of `batch --shard I/N` (I = 0 .. N-1) into one.

The merged folder holds predictions.jsonl and failures.jsonl with every shard's lines; each
`crop` is rewritten relative to the merged folder, so the crops stay where the shards wrote them.
Checks what it can without trusting the shards: all come from one split (the same COUNT), none
is given twice, none is missing (unless `partial`), and every line belongs to the shard whose
folder holds it (by the same hash `batch --shard` used). Memory holds one shard's keys at a time.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stn_serve.batch.journal import JsonLines
from stn_serve.batch.runner import FAILURES, PREDICTIONS
from stn_serve.batch.shards import Shard, read_shard
from stn_serve.errors import InvalidInputError


@dataclass
class MergeSummary:
    """shards: how many were merged, of `count`; predictions, failures: lines written;
    unreadable: lines cut short by an interrupted job, left out; repeated: a file's second line
    in one shard, left out; misplaced: lines of files that belong to another shard, left out;
    models: predictions per (model, version)."""

    shards: int = 0
    count: int = 0
    predictions: int = 0
    failures: int = 0
    unreadable: int = 0
    repeated: int = 0
    misplaced: int = 0
    models: Counter = field(default_factory=Counter)


def check_shards(folders: list[Path], partial: bool) -> list[tuple[Shard, Path]]:
    """Each folder's shard, in index order; raises InvalidInputError when they do not make up
    one whole split."""
    shards = sorted(((read_shard(f), f) for f in folders), key=lambda shard: shard[0].index)
    counts = sorted({shard.count for shard, _ in shards})
    if len(counts) > 1:
        raise InvalidInputError(
            f"the folders hold shards of splits into {counts} parts; merge one split"
        )
    by_index: dict[int, Path] = {}
    for shard, folder in shards:
        if shard.index in by_index:
            raise InvalidInputError(
                f"shard {shard} is in both {by_index[shard.index]} and {folder}"
            )
        by_index[shard.index] = folder
    missing = sorted(set(range(counts[0])) - set(by_index))
    if missing and not partial:
        raise InvalidInputError(
            f"shards {missing} of {counts[0]} are missing; pass --partial to merge the others"
        )
    return shards


def _records(path: Path, summary: MergeSummary):
    """The JSON objects of a JSON-lines file (none when it does not exist)."""
    if not path.exists():
        return
    with path.open("rb") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                record = None
            if isinstance(record, dict) and "file" in record:
                yield record
            else:
                summary.unreadable += 1


def merge_shards(folders: list[Path], out_dir: Path, *, partial: bool = False) -> MergeSummary:
    """Merge shard output folders into `out_dir` (see the module docstring)."""
    if not folders:
        raise InvalidInputError("name at least one shard output folder")
    shards = check_shards(folders, partial)
    if any(out_dir.resolve() == folder.resolve() for _, folder in shards):
        raise InvalidInputError(f"--out {out_dir} is one of the shards; merge into a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = MergeSummary(shards=len(shards), count=shards[0][0].count)
    partial_predictions, partial_failures = out_dir / f".{PREDICTIONS}", out_dir / f".{FAILURES}"
    with (
        JsonLines(partial_predictions, append=False) as predictions,
        JsonLines(partial_failures, append=False) as failures,
    ):
        for shard, folder in shards:
            seen: set[str] = set()
            for record in _records(folder / PREDICTIONS, summary):
                key = record["file"]
                if not shard.holds(key):
                    summary.misplaced += 1
                elif key in seen:
                    summary.repeated += 1
                else:
                    seen.add(key)
                    if record.get("crop"):
                        crop = os.path.relpath(folder / record["crop"], out_dir)
                        record["crop"] = Path(crop).as_posix()
                    predictions.write(record)
                    summary.predictions += 1
                    summary.models[(record.get("model"), record.get("version"))] += 1
            for record in _records(folder / FAILURES, summary):
                failures.write(record)
                summary.failures += 1
    # Whole files or nothing: a reader never sees a merge half done.
    partial_predictions.replace(out_dir / PREDICTIONS)
    partial_failures.replace(out_dir / FAILURES)
    return summary
