"""The command line as a newcomer meets it: --version, help that says what each flag does and
defaults to, bad values refused before anything heavy loads, each error printed once with what
to do, and contact sheets from `predict` and `batch`."""

from __future__ import annotations

import io
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import running_server
from PIL import Image

from stn_serve import __version__
from stn_serve.cli import main
from stn_serve.contract import DATA_SOURCES, DISTORTIONS


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"stn-serve {__version__}"


def test_help_shows_defaults_only_where_they_say_something(capsys):
    export = help_text(["export"], capsys)
    assert "its folder in the repository --version" in export  # required: no "(default: None)"
    assert "(default: the next free one)" in export
    batch = help_text(["batch"], capsys)
    assert "--out OUT output folder --server" in batch and "(default: None)" not in batch
    assert "(empty: the only model the server holds) --version" in batch  # no "(default: )"
    visualize = help_text(["visualize"], capsys)
    assert "CHECKPOINT checkpoint file" in visualize
    assert "(default: crops.png beside the checkpoint)" in visualize
    # The benchmark's own default replaces the training flag's note instead of contradicting it.
    accuracy = help_text(["bench", "accuracy"], capsys)
    assert "(default: fashion-mnist)" in accuracy
    assert "training epochs (default: the preset's, else 30)" in help_text(["train"], capsys)


def test_train_help_lists_the_sources_and_distortions(capsys):
    text = help_text(["train"], capsys)
    assert "--data {" + ",".join(DATA_SOURCES) + "}" in text
    assert "--distortion {" + ",".join(DISTORTIONS) + "}" in text


@pytest.mark.parametrize(
    "argv", [["train", "--data", "nope"], ["visualize", "x.pt", "--distortion", "RT"]]
)
def test_bad_data_or_distortion_fails_before_torch_loads(argv):
    # torch and the data modules cannot be imported here: argparse must refuse the value first.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['stn_serve.data'] = None\n"
        f"from stn_serve.cli import main; main({argv!r})"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_an_error_is_printed_once(tmp_path, capsys):
    assert main(["visualize", str(tmp_path / "absent.pt")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and str(tmp_path / "absent.pt") in line


def test_an_operating_system_error_names_the_path(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    argv = ["batch", str(tmp_path / "in"), "--out", str(blocked / "out"), "--server", "127.0.0.1:1"]
    assert main([*argv, "--shard", "0/1"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: cannot use {blocked / 'out'}: Not a directory"


def test_predict_on_a_folder_points_to_batch(tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path} is a folder; predict takes image files" in error
    assert f"stn-serve batch {tmp_path} --out" in error


def test_predict_without_a_server_says_to_start_one(tmp_path, capsys):
    image = tmp_path / "a.png"
    image.write_bytes(b"not read: no server")
    assert main(["predict", "--server", "127.0.0.1:1", "--timeout", "2", str(image)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: 127.0.0.1:1: UNAVAILABLE: ")
    assert line.endswith("; no stn-serve server answers there: start one (stn-serve serve "
                         "--repository export) or check the address")


def test_serve_on_a_busy_port_says_so_before_loading_models(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The repository does not exist: the port is checked first, in no time.
        argv = ["serve", "--repository", str(tmp_path / "none"), "--host", "127.0.0.1"]
        assert main([*argv, "--port", str(port)]) == 2
        error = capsys.readouterr().err
        assert f"cannot bind 127.0.0.1:{port}: the port is already in use (another `stn-serve " \
            "serve`?); stop what listens there, or pass --port with a free port" in error
        assert main([*argv, "--port", "0", "--metrics-port", str(port)]) == 2
        error = capsys.readouterr().err
        assert f"cannot serve metrics on 127.0.0.1:{port}: the port is already in use" in error
        assert "pass --metrics-port with a free port" in error


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_and_batch_draw_a_contact_sheet(model_repository, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for number in range(6):
        (images / f"{number}.png").write_bytes(png(40 * number))
    with running_server(model_repository) as (_, port):
        server = ["--server", f"127.0.0.1:{port}", "--model", "digits"]
        predicted = tmp_path / "predict.png"
        files = [str(path) for path in sorted(images.iterdir())]
        assert main(["predict", *server, "--sheet", str(predicted), *files]) == 0
        assert f"contact sheet of 6 images: {predicted}" in capsys.readouterr().out
        batched = tmp_path / "batch.png"
        out = tmp_path / "out"
        assert main(["batch", str(images), "--out", str(out), *server, "--sheet", str(batched),
                     "--progress", "off"]) == 0
        assert f"contact sheet: {batched}" in capsys.readouterr().out
    with Image.open(predicted) as first, Image.open(batched) as second:
        # 4 pairs a row, 2 rows: the same layout from both commands.
        assert first.size == second.size and first.width > 4 * 2 * 96 and first.height > 2 * 96
        assert len(set(np.asarray(first.convert("L")).ravel())) > 10  # pictures, not a blank page
