"""Training on tiny digits runs: loss goes down, files appear, resume and reproducibility."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stn_serve.errors import InvalidInputError
from stn_serve.train import TrainConfig, fit, load_checkpoint
from stn_serve.train.history import read_metrics
from stn_serve.train.optim import lr_factor

TIMING_KEYS = ("seconds",)


def tiny(tmp_path, **changes) -> TrainConfig:
    """A run of a few seconds on 160 digits (RTS-distorted to 42x42, cropped to 28x28)."""
    settings = {
        "data": "digits",
        "distortion": "RTS",
        "max_train_samples": 160,
        "max_test_samples": 64,
        "crop_size": (28, 28),
        "width": 8,
        "hidden": 32,
        "loc_width": 8,
        "loc_hidden": 16,
        "batch_size": 32,
        "epochs": 3,
        "lr": 3e-3,
        "device": "cpu",
        "progress": False,
        "plots": False,
        "out_dir": str(tmp_path / "run"),
    }
    return TrainConfig(**{**settings, **changes})


def without_timings(history: list[dict]) -> list[dict]:
    return [
        {key: value for key, value in record.items() if key not in TIMING_KEYS}
        for record in history
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run with plots, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("trained")
    return fit(tiny(out, distortion="none", epochs=4, plots=True))


def test_loss_goes_down_and_files_are_written(trained):
    result = trained
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.metrics["test_accuracy"] > 0.3, result.metrics
    out = result.out_dir
    assert {p.name for p in out.iterdir()} >= {
        "best.pt",
        "last.pt",
        "metrics.jsonl",
        "curves.png",
        "crops.png",
    }
    assert [p.name for p in result.plots] == ["curves.png", "crops.png"]
    for plot in result.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_checkpoints_load_and_reproduce_the_test_figure(trained):
    result = trained
    best = load_checkpoint(result.best_checkpoint)
    last = load_checkpoint(result.last_checkpoint)
    assert last.epoch == 4 and last.optimizer is not None and last.scheduler is not None
    assert best.epoch == result.metrics["best_epoch"]
    assert best.metrics["test_accuracy"] == result.metrics["test_accuracy"]
    assert best.labels == [str(d) for d in range(10)]
    assert best.input_shape == [1, 28, 28]
    assert best.train_config["data"] == "digits"
    from stn_serve.data import load_split

    test = load_split("digits", "test")
    images, labels = test.images[:64], test.labels[:64]
    with torch.no_grad():
        accuracy = (best.build_model()(images).logits.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["test_accuracy"])


def test_same_seed_same_metrics(tmp_path):
    first = fit(tiny(tmp_path / "a", epochs=2))
    second = fit(tiny(tmp_path / "b", epochs=2))
    assert without_timings(first.history) == without_timings(second.history)
    assert first.metrics["test_accuracy"] == second.metrics["test_accuracy"]
    other = fit(tiny(tmp_path / "c", epochs=2, seed=1))
    assert without_timings(other.history) != without_timings(first.history)


def test_resume_continues_where_it_stopped(tmp_path, monkeypatch):
    straight = fit(tiny(tmp_path / "straight"))
    from stn_serve.train import trainer

    epochs_run = []
    real_train_epoch = trainer.train_epoch

    def crash_in_third_epoch(*args, **kwargs):
        epochs_run.append(1)
        if len(epochs_run) == 3:
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_epoch", crash_in_third_epoch)
    config = tiny(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        fit(config)
    monkeypatch.undo()
    last = f"{config.out_dir}/last.pt"
    assert load_checkpoint(last).epoch == 2
    resumed = fit(config.replace(resume=last))
    assert [record["epoch"] for record in resumed.history] == [1, 2, 3]
    assert [record["epoch"] for record in read_metrics(resumed.out_dir)] == [1, 2, 3]
    assert load_checkpoint(resumed.last_checkpoint).epoch == 3
    # Data order, distortions, optimiser and schedule all continue: the same run as without a stop.
    assert without_timings(resumed.history) == without_timings(straight.history)
    assert resumed.metrics["test_accuracy"] == straight.metrics["test_accuracy"]


def test_resume_refuses_other_data(tmp_path):
    first = fit(tiny(tmp_path / "run", epochs=1))
    with pytest.raises(
        InvalidInputError, match="cannot resume from .*last.pt: it takes \\[1, 42, 42\\]"
    ):
        fit(tiny(tmp_path / "run", epochs=2, distortion="none", resume=str(first.last_checkpoint)))


def test_baseline_is_parameter_matched(tmp_path):
    stcnn = fit(tiny(tmp_path / "st", epochs=1))
    cnn = fit(tiny(tmp_path / "cnn", epochs=1, arch="cnn"))
    assert load_checkpoint(cnn.best_checkpoint).model_config.arch == "cnn"
    assert (
        abs(cnn.metrics["parameters"] - stcnn.metrics["parameters"])
        <= 0.1 * stcnn.metrics["parameters"]
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"val_fraction": 1.5}, "val_fraction must be in"),
        ({"arch": "vit"}, "arch must be stcnn or cnn"),
    ],
)
def test_bad_settings_are_named(tmp_path, changes, message):
    with pytest.raises(InvalidInputError, match=message):
        fit(tiny(tmp_path, **changes))


def test_resume_from_missing_checkpoint(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        fit(tiny(tmp_path, resume=str(tmp_path / "nope.pt")))


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("cosine", [1.0, 0.5, 0.0]),
        ("step", [1.0, 0.1, 0.1**2]),
        ("none", [1.0, 1.0, 1.0]),
    ],
)
def test_schedules(schedule, expected):
    factors = [lr_factor(schedule, step, 100) for step in (0, 50, 100)]
    assert all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(factors, expected))
