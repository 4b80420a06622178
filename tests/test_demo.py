"""The README's main command, in its quick mode: train → export → serve → query → picture,
and the sample images it leaves for `predict` and `batch`."""

import json
import re

from PIL import Image

from stn_serve.cli import main


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    out, repository = tmp_path / "run", tmp_path / "export"

    assert main(["demo", "--quick", "--out", str(out), "--repository", str(repository)]) == 0

    printed = capsys.readouterr().out
    model_dir = repository / "digits" / "1"
    description = json.loads((model_dir / "model.json").read_text())
    assert description["name"] == "digits" and description["version"] == 1
    assert (model_dir / "model.onnx").stat().st_size > 0
    picture = out / "served_predictions.png"
    with Image.open(picture) as image:
        assert image.width > 100 and image.height > 100
    # The output says where each artefact is, and the two protocols agreed.
    for path in (out / "train" / "best.pt", model_dir / "model.onnx", picture):
        assert str(path) in printed
    difference = re.search(r"Open Inference Protocol differ by at most (\S+)", printed)
    # Both protocols run the same session on the same batch: the answers must agree to rounding.
    assert difference and float(difference.group(1)) < 1e-5
    assert "server stopped" in printed

    # The images it queried are saved for `predict` and `batch`.
    samples = sorted((out / "samples").iterdir())
    assert str(out / "samples") in printed
    assert len(samples) == 16 and all(re.fullmatch(r"\d\d_label_\d\.png", p.name) for p in samples)
    for sample in samples:
        with Image.open(sample) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (42, 42)
    # What a user does next: run them through the exported model.
    predictions = tmp_path / "predictions"
    argv = ["batch", str(out / "samples"), "--out", str(predictions), "--repository",
            str(repository), "--device", "cpu", "--progress", "off"]
    assert main(argv) == 0
    assert len((predictions / "predictions.jsonl").read_text().splitlines()) == 16
