"""`stn-serve batch` and `stn_serve.batch`: a folder with a corrupt file, through a server and
through a local ONNX Runtime session; reruns skip what is done."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import running_server
from PIL import Image

from stn_serve.batch import InputFile, iter_inputs, run_batch
from stn_serve.batch.crops import crop_name
from stn_serve.batch.inputs import glob_root
from stn_serve.batch.journal import JsonLines, done_keys
from stn_serve.batch.predictors import Failure
from stn_serve.cli import main
from stn_serve.errors import NotFoundError
from stn_serve.imaging import crop_image

GOOD = ["a.png", "b.jpg", "nested/c.png", "nested/deeper/d.png", "rgb.png"]
BAD = "nested/bad.png"


def png_bytes(array: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Five readable images of assorted sizes and modes, one corrupt PNG and a text file."""
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in GOOD:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (40, 30, 3) if name == "rgb.png" else (28, 28)
        path.write_bytes(
            png_bytes(
                rng.integers(0, 256, shape, dtype=np.uint8),
                "JPEG" if name.endswith(".jpg") else "PNG",
            )
        )
    (folder / BAD).write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_first_run(out: Path, code: int, capsys) -> dict[str, dict]:
    assert code == 1, "a failed image must make the exit code non-zero"
    captured = capsys.readouterr()
    assert "5 predicted, 0 skipped as already done, 1 failed" in captured.out
    assert BAD in captured.err
    predictions = {record["file"]: record for record in lines(out / "predictions.jsonl")}
    assert sorted(predictions) == sorted(GOOD)
    for record in predictions.values():
        assert record["model"] == "digits" and record["version"] == 2
        assert len(record["top_k"]) == 3
        probabilities = [score["probability"] for score in record["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert len(record["theta"]) == 6
        with Image.open(out / record["crop"]) as crop:
            assert crop.size == (28, 28) and crop.mode == "L"
    (failure,) = lines(out / "failures.jsonl")
    assert failure["file"] == BAD and "PNG or JPEG" in failure["error"]
    return predictions


def check_rerun_skips_done(argv: list[str], out: Path, folder: Path, capsys) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "0 predicted, 5 skipped as already done, 1 failed" in captured.out
    assert len(lines(out / "predictions.jsonl")) == 5
    assert [f["file"] for f in lines(out / "failures.jsonl")] == [BAD]
    # Once the corrupt file is replaced, a rerun predicts just that one and succeeds.
    (folder / BAD).write_bytes(png_bytes(np.zeros((28, 28), np.uint8)))
    assert main(argv) == 0
    assert "1 predicted, 5 skipped as already done, 0 failed" in capsys.readouterr().out
    assert sorted(r["file"] for r in lines(out / "predictions.jsonl")) == sorted(GOOD + [BAD])
    assert lines(out / "failures.jsonl") == []


def test_batch_local_session(model_repository, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "batch",
        str(image_folder),
        "--out",
        str(out),
        "--repository",
        str(model_repository),
        "--model",
        "digits",
        "--device",
        "cpu",
        "--top-k",
        "3",
        "--chunk-size",
        "2",
        "--progress",
        "off",
    ]
    check_first_run(out, main(argv), capsys)
    check_rerun_skips_done(argv, out, image_folder, capsys)


def test_batch_via_server_matches_local(model_repository, image_folder, tmp_path, capsys):
    local_out = tmp_path / "local"
    common = [
        str(image_folder),
        "--model",
        "digits",
        "--top-k",
        "3",
        "--chunk-size",
        "4",
        "--progress",
        "off",
    ]
    local_argv = [
        "batch",
        *common,
        "--out",
        str(local_out),
        "--repository",
        str(model_repository),
        "--device",
        "cpu",
    ]
    local = check_first_run(local_out, main(local_argv), capsys)
    out = tmp_path / "remote"
    with running_server(model_repository) as (_, port):
        argv = ["batch", *common, "--out", str(out), "--server", f"127.0.0.1:{port}"]
        remote = check_first_run(out, main(argv), capsys)
        for name in GOOD:
            assert [s["index"] for s in remote[name]["top_k"]] == [
                s["index"] for s in local[name]["top_k"]
            ]
            np.testing.assert_allclose(remote[name]["theta"], local[name]["theta"], atol=1e-5)
        check_rerun_skips_done(argv, out, image_folder, capsys)


def test_batch_without_a_server_stops_at_once_saying_what_to_do(image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["batch", str(image_folder), "--out", str(out), "--server", "127.0.0.1:1"]
    assert main([*argv, "--timeout", "2", "--progress", "off"]) == 2
    (line,) = capsys.readouterr().err.splitlines()  # one line, not a log record as well
    assert line.startswith("error: 127.0.0.1:1: UNAVAILABLE: ")
    assert "no stn-serve server answers there: start one" in line
    assert not (out / "predictions.jsonl").exists()


def test_batch_reports_every_image_when_the_server_goes_away(
    model_repository, image_folder, tmp_path
):
    from stn_serve.batch import RemotePredictor
    from stn_serve.client import Client

    with running_server(model_repository) as (server, port):
        client = Client(f"127.0.0.1:{port}", model="digits", timeout=2)
        client.describe()
        server.stop(grace=None)
    with RemotePredictor(client, top_k=3) as predictor:
        inputs = iter_inputs(str(image_folder))
        summary = run_batch(inputs, predictor, tmp_path / "out", progress=False)
    assert summary.predicted == 0
    failures = lines(tmp_path / "out" / "failures.jsonl")
    assert sorted(f["file"] for f in failures) == sorted(GOOD + [BAD])
    assert all("UNAVAILABLE" in f["error"] for f in failures)


def test_batch_with_an_unknown_model_is_a_usage_error(
    model_repository, image_folder, tmp_path, capsys
):
    code = main(
        [
            "batch",
            str(image_folder),
            "--out",
            str(tmp_path / "out"),
            "--repository",
            str(model_repository),
            "--model",
            "nope",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


class RecordingPredictor:
    """Answers every image with a fixed prediction and records chunk sizes."""

    def __init__(self, fail: str | None = None):
        self.chunks: list[int] = []
        self.fail = fail

    def predict(self, chunk):
        from stn_serve.client import ClassScore, Prediction

        self.chunks.append(len(chunk))
        prediction = Prediction(
            [ClassScore(0, "0", 1.0)],
            np.zeros((1, 4, 4), np.float32),
            np.zeros(6, np.float32),
            "m",
            1,
        )
        return (
            [(file, prediction) for file, _ in chunk if file.key != self.fail],
            [Failure(file.key, "refused") for file, _ in chunk if file.key == self.fail],
        )

    def close(self):
        pass


def test_run_batch_reads_inputs_lazily_in_fixed_chunks(tmp_path):
    source = tmp_path / "x.png"
    source.write_bytes(b"anything")
    pulled = []

    def inputs():
        for index in range(10):
            pulled.append(index)
            yield InputFile(f"{index}.png", source)

    class Watching(RecordingPredictor):
        def predict(self, chunk):
            # Only the current chunk has been taken from the input iterator.
            assert len(pulled) == sum(self.chunks) + len(chunk)
            return super().predict(chunk)

    predictor = Watching()
    summary = run_batch(inputs(), predictor, tmp_path / "out", chunk_size=3, progress=False)
    assert predictor.chunks == [3, 3, 3, 1]
    assert summary.predicted == 10 and not summary.failures


def test_run_batch_keeps_going_after_unreadable_and_refused_files(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(b"bytes")
    inputs = [
        InputFile("good.png", good),
        InputFile("gone.png", tmp_path / "gone.png"),
        InputFile("refused.png", good),
        InputFile("late.png", good),
    ]
    summary = run_batch(
        inputs,
        RecordingPredictor(fail="refused.png"),
        tmp_path / "out",
        chunk_size=2,
        save_crops=False,
        progress=False,
    )
    assert summary.predicted == 2
    assert [(f.file, "cannot read" in f.error) for f in summary.failures] == [
        ("gone.png", True),
        ("refused.png", False),
    ]
    assert [r["file"] for r in lines(tmp_path / "out" / "predictions.jsonl")] == [
        "good.png",
        "late.png",
    ]
    assert all(r["crop"] is None for r in lines(tmp_path / "out" / "predictions.jsonl"))


def test_run_batch_rejects_a_zero_chunk_size(tmp_path):
    with pytest.raises(ValueError, match="chunk size must be >= 1, got 0"):
        run_batch([], RecordingPredictor(), tmp_path, chunk_size=0)


def test_iter_inputs_folder_is_sorted_recursive_and_images_only(image_folder):
    keys = [f.key for f in iter_inputs(str(image_folder))]
    assert keys == [
        "a.png",
        "b.jpg",
        "nested/bad.png",
        "nested/c.png",
        "nested/deeper/d.png",
        "rgb.png",
    ]


def test_iter_inputs_glob_keys_are_relative_to_the_fixed_prefix(image_folder):
    keys = sorted(f.key for f in iter_inputs(f"{image_folder}/nested/**/*.png"))
    assert keys == ["bad.png", "c.png", "deeper/d.png"]
    assert glob_root("data/*/x.png") == Path("data") and glob_root("*.png") == Path(".")
    assert list(iter_inputs(f"{image_folder}/*.gif")) == []


def test_iter_inputs_missing_source(tmp_path):
    with pytest.raises(NotFoundError, match="is not a folder, a file or a glob pattern"):
        list(iter_inputs(str(tmp_path / "missing")))


def test_done_keys_ignores_a_line_cut_short_and_appending_starts_a_fresh_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"file": "a.png"}\n{"file": "b.p')
    assert done_keys(path) == {"a.png"}
    with JsonLines(path, append=True) as journal:
        journal.write({"file": "c.png"})
    assert done_keys(path) == {"a.png", "c.png"}
    assert done_keys(tmp_path / "absent.jsonl") == set()


def test_crops_are_8_bit_images_named_after_their_input():
    gray = crop_image(np.full((1, 3, 5), 0.5, np.float32))
    assert gray.mode == "L" and gray.size == (5, 3) and gray.getpixel((0, 0)) == 128
    assert crop_image(np.ones((3, 2, 2), np.float32)).mode == "RGB"
    assert crop_name("a/b.jpg") == "a/b.jpg.png" and crop_name("a/b.PNG") == "a/b.PNG"
    with pytest.raises(
        ValueError, match=r"a crop must be \[C, h, w\] with C in \[1, 3, 4\], got \[2, 2, 2\]"
    ):
        crop_image(np.zeros((2, 2, 2), np.float32))
