"""`stn-serve bench accuracy --table`: the paper's table 1 laid out with its figures, one run a
cell, finished cells skipped on a re-run and unfinished ones trained again."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY_TRAINING_FLAGS

from stn_serve.bench import table
from stn_serve.bench.accuracy import FULL, _settings
from stn_serve.cli import build_parser, main
from stn_serve.train import TrainConfig, load_checkpoint, trainer
from stn_serve.train.options import config_from_args
from stn_serve.train.presets import PRESETS

TINY_FLAGS = ["--distortions", "R,RTS", "--models", "cnn,affine", *TINY_TRAINING_FLAGS]


def table_run(out, *flags) -> int:
    return main(["bench", "accuracy", "--table", *TINY_FLAGS, "--out", str(out), *flags])


def recording_fit(monkeypatch) -> list[TrainConfig]:
    """Make every cell's training run go through a recorder; returns the configs trained."""
    trained, real_fit = [], trainer.fit

    def fit(config):
        trained.append(config)
        return real_fit(config)

    monkeypatch.setattr(trainer, "fit", fit)
    return trained


def test_table_trains_each_cell_once_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "table"
    trained = recording_fit(monkeypatch)
    assert table_run(out) == 0
    printed = capsys.readouterr().out
    assert [(c.distortion, c.arch, c.transform) for c in trained] == [
        ("R", "cnn", "affine"),
        ("R", "stcnn", "affine"),
        ("RTS", "cnn", "affine"),
        ("RTS", "stcnn", "affine"),
    ]
    assert all(c.match_params and c.resume is None for c in trained)
    assert "[1/4] R / CNN: started (elapsed 0:00:" in printed
    assert "[4/4] RTS / ST-CNN Aff: test error " in printed

    summary = json.loads((out / "table.json").read_text())
    assert summary["total_wall_seconds"] == pytest.approx(
        sum(cell["wall_seconds"] for cell in summary["cells"])
    )
    markdown = (out / "table.md").read_text()
    assert markdown in printed
    assert "| model | R | RTS |" in markdown
    cells = {(c["model"], c["distortion"]): c for c in summary["cells"]}
    for model, distortion in cells:
        stored = json.loads((out / distortion / model / "metrics.json").read_text())
        assert f"{100 * stored['test_error']:.2f} ({table.PAPER[model][distortion]})" in markdown
    assert "· " not in markdown.split("| CNN |")[1].splitlines()[0]
    assert "°" in markdown.split("| ST-CNN Aff |")[1].splitlines()[0]
    stcnn, cnn = (load_checkpoint(out / "RTS" / m / "best.pt") for m in ("affine", "cnn"))
    assert cnn.model_config.arch == "cnn"
    budget = stcnn.metrics["parameters"]
    assert abs(cnn.metrics["parameters"] - budget) <= 0.1 * budget

    # A re-run trains nothing and writes the same table.
    trained.clear()
    assert table_run(out) == 0
    assert trained == []
    assert capsys.readouterr().out.count("(finished earlier; elapsed") == 4
    assert (out / "table.md").read_text() == markdown

    # A cell interrupted after an epoch resumes from last.pt; one with nothing kept starts afresh.
    (out / "R" / "affine" / "metrics.json").unlink()
    shutil.rmtree(out / "RTS" / "cnn")
    assert table_run(out) == 0
    assert [(c.distortion, c.arch, c.resume) for c in trained] == [
        ("R", "stcnn", str(out / "R" / "affine" / "last.pt")),
        ("RTS", "cnn", None),
    ]
    assert (out / "RTS" / "cnn" / "metrics.json").exists()

    # Cells trained with other settings are not mixed into the table.
    assert table_run(out, "--epochs", "2") == 2
    assert "was trained with other settings: epochs 1 (now 2)" in capsys.readouterr().err


def test_the_layout_is_the_papers_with_its_figures():
    cells = [
        {
            "model": model,
            "distortion": distortion,
            "test_error": 0.01,
            "pose_spread": {"distortion": {"rotation_deg": 40.0}}
            | ({} if model == "cnn" else {"model": {"rotation_deg": 2.0}}),
        }
        for distortion in table.TABLE_DISTORTIONS
        for model in table.MODELS
    ]
    markdown = table.render_markdown(
        {
            "data": "digits",
            "distortions": list(table.TABLE_DISTORTIONS),
            "models": list(table.MODELS),
            "command": "stn-serve bench accuracy --table",
            "settings": {"epochs": 10, "batch_size": 64, "seed": 0},
            "cells": cells,
            "total_wall_seconds": 1234.0,
        }
    )
    lines = markdown.splitlines()
    header = lines.index("| model | R | RTS | P | E | TC |")
    spread = " · 2.0° / 40.0°"
    assert lines[header + 2 :][:4] == [
        "| CNN | 1.00 (1.2) | 1.00 (0.8) | 1.00 (1.5) | 1.00 (1.4) | 1.00 (–) |",
        "| ST-CNN Aff | "
        + " | ".join(f"1.00 ({f}){spread}" for f in ("0.7", "0.5", "0.8", "1.2", "–"))
        + " |",
        "| ST-CNN Proj | "
        + " | ".join(f"1.00 ({f}){spread}" for f in ("0.8", "0.6", "0.8", "1.3", "–"))
        + " |",
        "| ST-CNN TPS | "
        + " | ".join(f"1.00 ({f}){spread}" for f in ("0.7", "0.5", "0.8", "1.1", "–"))
        + " |",
    ]
    assert "Total wall time 1234 s." in markdown


def test_table_flags_left_out_take_the_training_defaults():
    def settings(*flags):
        return _settings(build_parser().parse_args(["bench", "accuracy", *flags]))

    defaults = TrainConfig()
    left_out = config_from_args(settings("--table"))
    assert (left_out.data, left_out.epochs, left_out.crop_size, left_out.batch_size) == (
        defaults.data,
        defaults.epochs,
        defaults.crop_size,
        defaults.batch_size,
    )
    assert settings("--table").out_dir == "runs/bench-table"
    assert settings("--table").distortions == table.TABLE_DISTORTIONS
    assert settings("--table").models == tuple(table.MODELS)
    chosen = config_from_args(settings("--table", "--data", "fashion-mnist", "--epochs", "3"))
    # The data source's preset fills what was left out; a flag given wins over it.
    assert (chosen.data, chosen.epochs, chosen.preset) == ("fashion-mnist", 3, "fashion-mnist")
    assert chosen.batch_size == PRESETS["fashion-mnist"]["batch_size"]
    full = settings()
    assert {name: getattr(full, name) for name in FULL} == FULL
    assert config_from_args(full).epochs == PRESETS["fashion-mnist"]["epochs"]
    assert full.out_dir == "runs/bench-accuracy"
    assert settings("--quick", "--data", "fashion-mnist").data == "fashion-mnist"
    assert config_from_args(settings("--quick")).preset == "default"


def test_bad_table_flags_are_refused(capsys):
    assert main(["bench", "accuracy", "--table", "--distortion", "R"]) == 2
    assert "--distortions" in capsys.readouterr().err
    for flag in ("--distortions", "--models"):
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args(["bench", "accuracy", "--table", flag, "R,nope"])
        assert stop.value.code == 2
        assert "separated by commas, got 'R,nope'" in capsys.readouterr().err
