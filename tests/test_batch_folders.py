"""Batch inference on hostile folders: names that are not UTF-8, symlinks to the folder itself and
to folders outside it, broken and looping links, a FIFO named like an image, folders that cannot
be listed, a tree deeper than the longest path, huge files. Each image is predicted once, and
whatever cannot be read is a failure in failures.jsonl, never a traceback."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stn_serve.batch import iter_inputs, run_batch
from stn_serve.batch.inputs import GlobPattern, printable
from stn_serve.batch.journal import JsonLines, done_keys
from stn_serve.cli import main

NOT_UTF8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 "café": not valid UTF-8


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def hostile(tmp_path) -> Path:
    """images/: a.png, sub/b.png, sub/deeper/c.png, café.png (Latin-1 name), and: self -> .,
    again -> sub (both inside), outside -> ../elsewhere and outside2 -> ../elsewhere (one folder
    outside, holding e.png), broken.png (dangling link), loop.png -> loop.png, fifo.png."""
    root = tmp_path / "images"
    (root / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for number, name in enumerate(["a.png", "sub/b.png", "sub/deeper/c.png", NOT_UTF8]):
        (root / name).write_bytes(png(number))
    (tmp_path / "elsewhere" / "e.png").write_bytes(png(9))
    os.symlink(".", root / "self")
    os.symlink("sub", root / "again")
    os.symlink("../elsewhere", root / "outside")
    os.symlink("../elsewhere", root / "outside2")
    os.symlink("missing.png", root / "broken.png")
    os.symlink("loop.png", root / "loop.png")
    os.mkfifo(root / "fifo.png")
    return root


PREDICTABLE = ["a.png", NOT_UTF8, "outside/e.png", "sub/b.png", "sub/deeper/c.png"]
UNREADABLE = ["broken.png", "fifo.png", "loop.png"]


def test_a_hostile_folder_yields_each_image_once_and_names_what_cannot_be_read(hostile):
    found = list(iter_inputs(str(hostile)))
    keys = [file.key for file in found]
    assert sorted(keys) == sorted(PREDICTABLE + UNREADABLE)
    errors = {file.key: file.error for file in found if file.error}
    assert set(errors) == set(UNREADABLE)
    assert "broken symbolic link" in errors["broken.png"]
    assert "not a regular file" in errors["fifo.png"]
    assert "Too many levels of symbolic links" in errors["loop.png"]


def test_symlinked_folders_can_be_left_out(hostile):
    keys = [file.key for file in iter_inputs(str(hostile), follow_symlinks=False)]
    assert sorted(keys) == sorted(set(PREDICTABLE + UNREADABLE) - {"outside/e.png"})


def test_a_folder_that_cannot_be_listed_is_a_failure_and_the_walk_goes_on(hostile, monkeypatch):
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "deeper":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = {file.key: file.error for file in iter_inputs(str(hostile))}
    assert found["sub/deeper/"] == "cannot list folder: Permission denied"
    assert "sub/b.png" in found and "sub/deeper/c.png" not in found


def test_a_tree_deeper_than_the_longest_path_is_walked_without_recursion(tmp_path):
    root = tmp_path / "deep"
    root.mkdir()
    (root / "top.png").write_bytes(png())
    # 40 levels of 200-character names: deeper than PATH_MAX (4096) and than Python's recursion.
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(40):
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    found = list(iter_inputs(str(root)))
    assert found[-1].key == "top.png" and found[-1].error is None
    (too_long,) = found[:-1]
    assert too_long.key.endswith("/") and "name too long" in too_long.error.lower()


def test_names_that_are_not_utf8_are_written_losslessly_and_resumed(tmp_path):
    path = tmp_path / "predictions.jsonl"
    with JsonLines(path, append=False) as journal:
        journal.write({"file": NOT_UTF8})
        journal.write({"file": "é.png"})
    raw = path.read_bytes()
    raw.decode("utf-8")  # every line stays valid UTF-8
    assert b'"caf\\udce9.png"' in raw and "é.png".encode() in raw
    assert os.fsencode(json.loads(raw.splitlines()[0])["file"]) == b"caf\xe9.png"
    assert done_keys(path) == {NOT_UTF8, "é.png"}
    assert printable(NOT_UTF8) == "caf\\xe9.png"


def test_glob_patterns_follow_globs_rules_on_the_same_safe_walk(hostile):
    def keys(pattern: str) -> list[str]:
        return sorted(file.key for file in iter_inputs(f"{hostile}/{pattern}") if not file.error)

    assert keys("*.png") == sorted(["a.png", NOT_UTF8])
    assert keys("**/*.png") == sorted(PREDICTABLE)
    assert keys("sub/**/*.png") == ["b.png", "deeper/c.png"]
    assert keys("*/*.png") == ["outside/e.png", "sub/b.png"]  # not self/, again/ or outside2/
    assert GlobPattern("**/*.png").matches(("x", "y.png"))
    assert not GlobPattern("*.png").matches((".hidden.png",))
    assert not GlobPattern("**/*.png").matches((".git", "y.png"))
    assert GlobPattern(".*/*.png").matches((".cache", "y.png"))


def test_the_output_folder_inside_the_input_is_not_read_back(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(png())
    (root / "out" / "crops").mkdir(parents=True)
    (root / "out" / "crops" / "a.png").write_bytes(png())
    keys = [file.key for file in iter_inputs(str(root), skip=root / "out")]
    assert keys == ["a.png"]


class Counting:
    """Answers every image with the same prediction and counts how often each key was asked."""

    def __init__(self):
        self.asked: dict[str, int] = {}

    def predict(self, chunk):
        from stn_serve.client import ClassScore, Prediction

        for file, _ in chunk:
            self.asked[file.key] = self.asked.get(file.key, 0) + 1
        answer = Prediction(
            [ClassScore(0, "0", 1.0)], np.zeros((1, 4, 4), np.float32), np.zeros(6), "m", 1
        )
        return [(file, answer) for file, _ in chunk], []

    def close(self):
        pass


def test_run_batch_refuses_files_over_the_size_limit_without_reading_them(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "huge.png").write_bytes(png() + b"\0" * 5000)
    (tmp_path / "in" / "small.png").write_bytes(png())
    predictor = Counting()
    summary = run_batch(
        iter_inputs(str(tmp_path / "in")), predictor, tmp_path / "out", max_file_bytes=4000,
        save_crops=False, progress=False,
    )
    assert predictor.asked == {"small.png": 1}
    (failure,) = summary.failures
    assert failure.file == "huge.png" and "larger than" in failure.error


def test_batch_command_on_a_hostile_folder(model_repository, hostile, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["batch", str(hostile), "--out", str(out), "--repository", str(model_repository),
            "--model", "digits", "--device", "cpu", "--progress", "off", "--log-level", "ERROR"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "5 predicted, 0 skipped as already done, 3 failed" in captured.out
    assert "caf\\xe9.png" not in captured.err  # predicted, so not listed among the failures
    predicted = [record["file"] for record in lines(out / "predictions.jsonl")]
    assert sorted(predicted) == sorted(PREDICTABLE)  # each once: no self/, again/, outside2/
    crop = next(r["crop"] for r in lines(out / "predictions.jsonl") if r["file"] == NOT_UTF8)
    assert os.fsencode(out / crop).endswith(b"caf\xe9.png") and (out / crop).is_file()
    failures = {record["file"]: record["error"] for record in lines(out / "failures.jsonl")}
    assert sorted(failures) == sorted(UNREADABLE)
    assert all(str(hostile / name) in failures[name] for name in UNREADABLE)  # named by path
    # A rerun (the same job resumed) predicts nothing again, the Latin-1 name included.
    assert main(argv) == 1
    assert "0 predicted, 5 skipped as already done, 3 failed" in capsys.readouterr().out
