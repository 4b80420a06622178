"""`stn-serve bench batch`: batch with a local session and through a server, against in-process
ONNX Runtime on decoded images, in one run (a tiny run: the figures themselves are not checked)."""

from __future__ import annotations

import re

from stn_serve.bench.batch import IN_PROCESS, LOCAL, LOCAL_NO_CROPS, SERVED
from stn_serve.cli import main


def test_bench_batch_prints_each_way_beside_the_in_process_baseline(model_repository, capsys):
    argv = ["bench", "batch", "--repository", str(model_repository), "--model", "digits",
            "--images", "48", "--rounds", "1", "--device", "cpu", "--log-level", "WARNING"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "48 PNG files" in printed and "chunks of 32" in printed
    rows = {}
    for what in (IN_PROCESS, LOCAL, LOCAL_NO_CROPS, SERVED):
        match = re.search(re.escape(what) + r"\s+([\d,]+)\s+\(.*?\)\s+([\d.]+)x", printed)
        assert match, what
        rows[what] = (float(match.group(1).replace(",", "")), float(match.group(2)))
    assert rows[IN_PROCESS][1] == 1.0
    assert all(images_per_s > 0 for images_per_s, _ in rows.values())


def test_bench_batch_refuses_an_empty_run(capsys):
    assert main(["bench", "batch", "--images", "0"]) == 2
    assert "--images, --chunk-size and --rounds must be at least 1" in capsys.readouterr().err
