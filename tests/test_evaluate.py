"""`stn-serve evaluate` and `evaluate_checkpoint` on one tiny digits run: the same test figures as
training reported, the canonical pose spread, and a clear error for each bad checkpoint."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from conftest import TINY_TRAINING_FLAGS

from stn_serve.cli import main
from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.models import build_model
from stn_serve.train import load_checkpoint, save_checkpoint
from stn_serve.train.evaluation import evaluate_checkpoint

TINY_FLAGS = [
    "--data",
    "digits",
    "--distortion",
    "RTS",
    *TINY_TRAINING_FLAGS,
    "--no-plots",
]
SPREAD_LINE = "canonical pose spread (model / distortion alone): rotation "


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(best.pt, what `stn-serve train` printed) of one tiny RTS run."""
    out = tmp_path_factory.mktemp("run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", *TINY_FLAGS, "--out", str(out)]) == 0
    return out / "best.pt", printed.getvalue()


def test_training_reports_the_pose_spread(trained):
    best, printed = trained
    spreads = load_checkpoint(best).metrics["pose_spread"]
    assert set(spreads) == {"model", "distortion"}
    for spread in spreads.values():
        assert set(spread) == {"rotation_deg", "log_scale", "translation_px"}
    # RTS rotates by up to ±45°: the distortion alone spreads the pose by tens of degrees.
    assert spreads["distortion"]["rotation_deg"] > 10
    assert SPREAD_LINE in printed


def test_evaluation_agrees_with_the_training_run(trained):
    best, _ = trained
    trained_metrics = load_checkpoint(best).metrics
    result = evaluate_checkpoint(best, device="cpu")
    assert result["test_count"] == 32
    assert (result["data"], result["distortion"]) == ("digits", "RTS")
    assert result["test_accuracy"] == trained_metrics["test_accuracy"]
    assert result["test_loss"] == pytest.approx(trained_metrics["test_loss"], rel=1e-5)
    for part in ("model", "distortion"):
        assert result["pose_spread"][part] == pytest.approx(
            trained_metrics["pose_spread"][part], rel=1e-5, abs=1e-6
        )


def test_evaluate_prints_accuracy_and_spread(trained, capsys):
    best, _ = trained
    accuracy = load_checkpoint(best).metrics["test_accuracy"]
    assert main(["evaluate", str(best), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{best}: test accuracy {accuracy:.2%} (loss ")
    assert lines[0].endswith(") on 32 digits / RTS test images")
    assert lines[1].startswith(SPREAD_LINE)


def test_evaluate_json_with_overrides(trained, capsys):
    best, _ = trained
    argv = ["evaluate", str(best), "--json", "--max-test-samples", "16", "--device", "cpu"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_count"] == 16 and 0.0 <= result["test_accuracy"] <= 1.0
    assert set(result["pose_spread"]) == {"model", "distortion"}


def test_evaluate_refuses_a_distortion_of_another_size(trained, capsys):
    best, _ = trained
    assert main(["evaluate", str(best), "--distortion", "R"]) == 2
    assert "takes images [1, 42, 42], the data gives [1, 28, 28]" in capsys.readouterr().err


def test_evaluate_names_a_missing_or_broken_checkpoint(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "absent.pt")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: checkpoint {tmp_path / 'absent.pt'} does not exist"
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint")
    assert main(["evaluate", str(broken)]) == 2
    assert "is not a torch.save zip archive" in capsys.readouterr().err
    with pytest.raises(NotFoundError):
        evaluate_checkpoint(tmp_path / "absent.pt")


def test_a_checkpoint_without_training_settings_is_refused(trained, tmp_path):
    best, _ = trained
    checkpoint = load_checkpoint(best)
    bare = tmp_path / "bare.pt"
    save_checkpoint(
        bare, checkpoint.build_model(), checkpoint.model_config, checkpoint.labels, epoch=1
    )
    with pytest.raises(InvalidInputError, match="does not say what data it was trained on"):
        evaluate_checkpoint(bare, device="cpu")


def test_the_cnn_baseline_gets_the_distortion_spread_alone(trained, tmp_path):
    best, _ = trained
    checkpoint = load_checkpoint(best)
    cnn_config = checkpoint.model_config.replace(arch="cnn")
    torch.manual_seed(0)
    cnn = tmp_path / "cnn.pt"
    save_checkpoint(
        cnn,
        build_model(cnn_config),
        cnn_config,
        checkpoint.labels,
        train_config=checkpoint.train_config,
    )
    result = evaluate_checkpoint(cnn, device="cpu")
    assert set(result["pose_spread"]) == {"distortion"}
