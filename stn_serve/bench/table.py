"""`stn-serve bench accuracy --table`: the STN paper's table 1 (its distorted-MNIST part) as one
command.

Rows are the models, the CNN baseline and ST-CNNs with affine, projective and thin-plate-spline
transformers, all at the affine ST-CNN's parameter budget; columns are the distortions. Each cell
is one training run with the same settings but for model and distortion, kept under
`--out/<distortion>/<model>/` (checkpoints, metrics.jsonl, plots) with a `metrics.json` written
last, when the cell is finished. A re-run skips finished cells and resumes an unfinished one from
its last.pt, so an interrupted table picks up where it stopped.

The paper's figures (Jaderberg et al. 2015, table 1, MNIST test error in %) stand beside the
measured ones for reference; the paper has no TC column in that table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from stn_serve.contract import DISTORTIONS
from stn_serve.errors import InvalidInputError, StnServeError

log = logging.getLogger(__name__)

#: The table's columns by default.
TABLE_DISTORTIONS = ("R", "RTS", "P", "E", "TC")
CELL_METRICS, TABLE_JSON, TABLE_MD = "metrics.json", "table.json", "table.md"
#: Training settings that say where and how a run goes, not what it learns: a finished cell
#: counts as done whatever these were.
RUN_SETTINGS = ("out_dir", "resume", "device", "progress", "plots")
#: Settings that differ from cell to cell.
CELL_SETTINGS = ("arch", "transform", "match_params", "distortion")


@dataclass(frozen=True)
class Row:
    """One model of the table: its label, architecture and transform family.

    The CNN keeps transform "affine": its size is matched against the affine ST-CNN.
    """

    label: str
    arch: str
    transform: str


#: Row name (its folder in each column) -> model, in the paper's order.
MODELS = {
    "cnn": Row("CNN", "cnn", "affine"),
    "affine": Row("ST-CNN Aff", "stcnn", "affine"),
    "projective": Row("ST-CNN Proj", "stcnn", "projective"),
    "tps": Row("ST-CNN TPS", "stcnn", "tps"),
}
#: The paper's test error (%) on distorted MNIST, per row and distortion.
PAPER = {
    "cnn": {"R": 1.2, "RTS": 0.8, "P": 1.5, "E": 1.4},
    "affine": {"R": 0.7, "RTS": 0.5, "P": 0.8, "E": 1.2},
    "projective": {"R": 0.8, "RTS": 0.6, "P": 0.8, "E": 1.3},
    "tps": {"R": 0.7, "RTS": 0.5, "P": 0.8, "E": 1.1},
}


def name_list(choices: tuple[str, ...]):
    """The argparse type of a comma-separated list of names from `choices`: "R,RTS" -> ("R", "RTS")."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        if not names or any(name not in choices for name in names):
            raise argparse.ArgumentTypeError(
                f"expected names from {', '.join(choices)} separated by commas, got {text!r}"
            )
        return names

    return parse


distortion_list = name_list(DISTORTIONS)
model_list = name_list(tuple(MODELS))


def _comparable(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key not in RUN_SETTINGS}


def _check_same_settings(where: Path, stored: dict | None, wanted: dict) -> None:
    """Refuse to mix a cell trained with other settings into this table."""
    stored, wanted = _comparable(stored or {}), _comparable(wanted)
    changed = sorted(key for key in wanted if stored.get(key, wanted[key]) != wanted[key])
    if changed:
        shown = ", ".join(f"{key} {stored[key]!r} (now {wanted[key]!r})" for key in changed)
        raise InvalidInputError(
            f"{where} was trained with other settings: {shown}; pass another --out or remove it"
        )


def _resume_point(cell_dir: Path, settings: dict) -> str | None:
    """last.pt of an unfinished cell trained with these settings, or None to start afresh."""
    from stn_serve.train.checkpoint import load_checkpoint
    from stn_serve.train.trainer import LAST

    last = cell_dir / LAST
    if not last.exists():
        return None
    try:
        checkpoint = load_checkpoint(last)
    except StnServeError as error:
        log.warning("starting %s afresh: %s", cell_dir, error)
        return None
    _check_same_settings(last, checkpoint.train_config, settings)
    return str(last)


def _write_json(path: Path, value: dict) -> None:
    """Write atomically, so an interrupted run never leaves half a metrics.json behind."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def run_cell(args: argparse.Namespace, model: str, distortion: str, out_dir: Path) -> dict:
    """Train (or resume) one cell unless it is finished; returns its metrics.json contents."""
    from stn_serve.train.options import config_from_args
    from stn_serve.train.trainer import fit

    row, cell_dir = MODELS[model], out_dir / distortion / model
    config = config_from_args(
        args,
        arch=row.arch,
        transform=row.transform,
        match_params=True,
        distortion=distortion,
        out_dir=str(cell_dir),
    )
    settings = config.to_dict()
    finished = cell_dir / CELL_METRICS
    if finished.exists():
        cell = json.loads(finished.read_text(encoding="utf-8"))
        _check_same_settings(finished, cell.get("train_config"), settings)
        return {**cell, "skipped": True}
    started = time.perf_counter()
    result = fit(config.replace(resume=_resume_point(cell_dir, settings)))
    cell = {
        "model": model,
        "label": row.label,
        "distortion": distortion,
        **result.metrics,
        "test_error": 1.0 - result.metrics["test_accuracy"],
        "wall_seconds": time.perf_counter() - started,
        "train_config": settings,
    }
    _write_json(finished, cell)
    return {**cell, "skipped": False}


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def _rotation(cell: dict) -> str:
    """ "model° / distortion°" of an ST-CNN cell; "" for the CNN, which has no crop pose."""
    spread = cell.get("pose_spread", {})
    if "model" not in spread:
        return ""
    return f"{spread['model']['rotation_deg']:.1f}° / {spread['distortion']['rotation_deg']:.1f}°"


def cell_text(model: str, distortion: str, cell: dict | None) -> str:
    """ "0.84 (0.7) · 3.1° / 51.9°": measured error %, the paper's, rotation spreads."""
    if cell is None:
        return ""
    paper = PAPER[model].get(distortion)
    text = f"{100 * cell['test_error']:.2f} ({'–' if paper is None else paper})"
    rotation = _rotation(cell)
    return f"{text} · {rotation}" if rotation else text


def render_markdown(table: dict) -> str:
    """table.md: the error table (rows: models, columns: distortions) and how it was made."""
    distortions, models = table["distortions"], table["models"]
    cells = {(cell["model"], cell["distortion"]): cell for cell in table["cells"]}
    lines = [
        (
            f"Test error (%) on {table['data']}, measured (the paper's MNIST figure in brackets); "
            "ST-CNN cells add the canonical rotation spread of the crops, model / distortion alone."
        ),
        "",
        "| model | " + " | ".join(distortions) + " |",
        "| --- |" + " ---: |" * len(distortions),
    ]
    for model in models:
        texts = [cell_text(model, d, cells.get((model, d))) for d in distortions]
        lines.append(f"| {MODELS[model].label} | " + " | ".join(texts) + " |")
    settings = table["settings"]
    lines += [
        "",
        (
            f"Each cell one run: `{table['command']}`; epochs {settings['epochs']}, batch size "
            f"{settings['batch_size']}, seed {settings['seed']}; the CNN has the affine ST-CNN's "
            f"parameter count. Total wall time {table['total_wall_seconds']:.0f} s."
        ),
        "",
    ]
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> str:
    models = "" if list(args.models) == list(MODELS) else f" --models {','.join(args.models)}"
    return (
        f"stn-serve bench accuracy --table --data {args.data} "
        f"--distortions {','.join(args.distortions)}{models}"
    )


def run_table(args: argparse.Namespace) -> int:
    """Every cell of --models × --distortions, then table.json and table.md in --out."""
    out_dir = Path(args.out_dir)
    models = list(args.models)
    order = [(d, m) for d in args.distortions for m in models]
    started = time.perf_counter()
    cells = []
    for number, (distortion, model) in enumerate(order, start=1):
        name = f"[{number}/{len(order)}] {distortion} / {MODELS[model].label}"
        print(f"{name}: started (elapsed {_clock(time.perf_counter() - started)})", flush=True)
        cell = run_cell(args, model, distortion, out_dir)
        done = "finished earlier" if cell.pop("skipped") else f"{cell['wall_seconds']:.1f} s"
        rotation = _rotation(cell)
        print(
            f"{name}: test error {100 * cell['test_error']:.2f} %"
            + (f", rotation spread {rotation}" if rotation else "")
            + f" ({done}; elapsed {_clock(time.perf_counter() - started)})",
            flush=True,
        )
        cells.append(cell)
    table = {
        "data": args.data,
        "distortions": list(args.distortions),
        "models": models,
        "command": _command(args),
        "settings": {
            key: value
            for key, value in _comparable(cells[0]["train_config"]).items()
            if key not in CELL_SETTINGS
        },
        "paper": PAPER,
        "cells": cells,
        "total_wall_seconds": sum(cell["wall_seconds"] for cell in cells),
        "this_run_seconds": time.perf_counter() - started,
    }
    markdown = render_markdown(table)
    _write_json(out_dir / TABLE_JSON, table)
    (out_dir / TABLE_MD).write_text(markdown, encoding="utf-8")
    print(markdown, end="")
    print(f"table: {out_dir / TABLE_JSON}, {out_dir / TABLE_MD}")
    return 0
