"""`stn-serve train`, `stn-serve visualize` and `stn-serve bench accuracy` on tiny digits runs,
and data-parallel training under torchrun with two CPU processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stn_serve.cli import build_parser, main
from stn_serve.commands.train import output_folder
from stn_serve.train import TrainConfig, load_checkpoint
from stn_serve.train.options import config_from_args

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = [
    "--data",
    "digits",
    "--distortion",
    "RTS",
    "--crop-size",
    "28x28",
    "--max-train-samples",
    "120",
    "--max-test-samples",
    "40",
    "--width",
    "8",
    "--hidden",
    "32",
    "--loc-width",
    "8",
    "--loc-hidden",
    "16",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--no-progress",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_train_flag_defaults_are_the_library_defaults():
    args = build_parser().parse_args(["train"])
    assert config_from_args(args, out_dir=output_folder(args)) == TrainConfig()


def test_resume_continues_in_the_checkpoints_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default output folder, runs/train, would go
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"test accuracy \d+\.\d\d% \(best epoch 1, val accuracy \d+\.\d\d%\)", printed)
    assert f"plots: {out / 'curves.png'}, {out / 'crops.png'}" in printed
    resume = ["--resume", str(out / "last.pt"), "--no-plots"]
    assert main(["train", *TINY_FLAGS, "--epochs", "2", *resume]) == 0
    assert not (tmp_path / "runs").exists()
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]


def test_train_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--data",
        "--data-dir",
        "--distortion",
        "--transform",
        "--arch",
        "--epochs",
        "--batch-size",
        "--lr",
        "--schedule",
        "--loc-lr-mult",
        "--weight-decay",
        "--seed",
        "--out",
        "--resume",
        "--device",
        "--max-train-samples",
    ):
        assert flag in text
    assert text.count("(default:") >= 30


def test_train_then_visualize(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(out), "--no-plots"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert not (out / "crops.png").exists()
    png = tmp_path / "figures" / "grid.png"
    assert main(["visualize", str(out / "best.pt"), "--out", str(png), "--count", "5"]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert main(["visualize", str(out / "last.pt")]) == 0
    assert (out / "crops.png").read_bytes()[:8] == PNG_MAGIC


def test_visualize_reports_a_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("nothing here")
    assert main(["visualize", str(bad)]) == 2
    assert "is not a torch.save zip archive" in capsys.readouterr().err


def test_visualize_rejects_data_of_another_shape(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(out), "--no-plots"]) == 0
    assert main(["visualize", str(out / "best.pt"), "--distortion", "none"]) == 2
    assert "takes images [1, 42, 42], the data gives [1, 28, 28]" in capsys.readouterr().err


def test_bench_accuracy_prints_both_errors_and_their_ratio(tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "accuracy",
                "--quick",
                *TINY_FLAGS,
                "--epochs",
                "1",
                "--depth",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    summary = json.loads((out / "accuracy.json").read_text())
    assert summary["data"] == "digits" and summary["epochs"] == 1
    for arch in ("stcnn", "cnn"):
        row = summary[arch]
        assert row["test_error"] == pytest.approx(1 - row["test_accuracy"])
        assert f"{100 * row['test_error']:.2f}%" in text
        assert load_checkpoint(out / arch / "best.pt").model_config.arch == arch
    assert f"error ratio ST-CNN / CNN: {summary['error_ratio']:.3f}" in text
    params = summary["stcnn"]["parameters"], summary["cnn"]["parameters"]
    assert abs(params[0] - params[1]) <= 0.1 * params[0]


def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        # The rendezvous store binds a free port itself: a port picked here and released could be
        # taken by another test's server before torchrun binds it.
        "--standalone",
        "-m",
        "stn_serve",
        "train",
        *TINY_FLAGS,
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1, done.stdout  # only rank 0 reports
    assert "2 process(es)" in done.stderr
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint.epoch == 2
    assert [
        json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()
    ] == [1, 2]
    assert (out / "crops.png").exists() and (out / "curves.png").exists()
    assert not list(out.glob("*.partial"))


def test_parsers_build_without_torch():
    """`stn-serve train --help` must work in a serving image, where torch is absent."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from stn_serve.cli import main\n"
        "for command in (['train', '--help'], ['visualize', '--help'], ['bench', 'accuracy', '--help']):\n"
        "    try:\n"
        "        main(command)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, command\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--loc-lr-mult" in done.stdout and "--quick" in done.stdout


@pytest.mark.parametrize("text", ["28x", "0x28", "big", "1x2x3"])
def test_bad_size_flags_are_refused(text, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["train", "--crop-size", text])
    assert stop.value.code == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


def test_size_flags_accept_one_or_two_numbers():
    args = build_parser().parse_args(["train", "--crop-size", "28", "--image-size", "32x48"])
    assert args.crop_size == (28, 28) and args.image_size == (32, 48)


def test_bench_accuracy_quick_keeps_the_flags_a_user_set():
    from stn_serve.bench.accuracy import QUICK, _settings
    from stn_serve.cli import build_parser

    def settings(*flags):
        return _settings(build_parser().parse_args(["bench", "accuracy", "--quick", *flags]))

    defaults = settings()
    assert {name: getattr(defaults, name) for name in QUICK} == QUICK
    chosen = settings("--depth", "4", "--epochs", "2", "--data", "mnist")
    assert (chosen.depth, chosen.epochs, chosen.data) == (4, 2, "mnist")
    # Flags left out: the data source's preset fills them when the config is made.
    assert chosen.batch_size is None
