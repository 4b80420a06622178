"""The README's main command, in its quick mode: train → export → serve → query → picture."""

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
