"""metrics.jsonl: one JSON object per epoch, appended as training goes."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def append_metrics(out_dir: Path, record: dict) -> None:
    with (out_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics(out_dir: Path) -> list[dict]:
    """Every record of out_dir/metrics.jsonl, in order ([] if there is none)."""
    path = out_dir / METRICS_FILE
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def truncate_metrics(out_dir: Path, epochs: int) -> list[dict]:
    """Keep the records of epochs 1..`epochs` (a resumed run rewrites what came after)."""
    kept = [record for record in read_metrics(out_dir) if record.get("epoch", 0) <= epochs]
    (out_dir / METRICS_FILE).write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8"
    )
    return kept
