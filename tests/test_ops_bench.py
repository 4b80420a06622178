"""`stn-serve bench layer` runs end to end on small sizes and prints its table."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stn_serve.bench.contention import busy_processes, other_cores
from stn_serve.bench.layer import parse_case
from stn_serve.cli import main


def test_bench_layer_prints_times_and_ratios_for_each_case(capsys):
    argv = [
        "bench",
        "layer",
        "--cases",
        "4x1x8x8:6x6",
        "3x3x7x9:9x5",
        "--repeats",
        "2",
        "--rounds",
        "1",
        "--warmup",
        "1",
        "--padding-mode",
        "reflection",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for label in ("4 1 8x8 -> 6x6", "3 3 7x9 -> 9x5"):
        for pass_name in ("forward", "forward+backward"):
            row = re.search(
                rf"^{re.escape(label)}\s+{re.escape(pass_name)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$",
                out,
                re.MULTILINE,
            )
            assert row, f"no {pass_name} row for {label} in:\n{out}"
            native, custom, ratio = (float(v) for v in row.groups())
            assert native > 0 and custom > 0
            assert ratio == pytest.approx(custom / native, rel=0.05, abs=0.01)
        difference = re.search(
            rf"^{re.escape(label)}\s+largest .*: ([\d.e+-]+)$", out, re.MULTILINE
        )
        assert difference and float(difference.group(1)) < 1e-4
    assert re.search(r"^worst ratio [\d.]+x (meets|misses) the target of 1.0x$", out, re.MULTILINE)
    assert "0 busy processes beside it" in out and "train step" not in out


def test_bench_layer_contended_train_step_prints_its_ratio(capsys):
    argv = ["bench", "layer", "--cases", "2x1x6x6:4x4", "--repeats", "1", "--rounds", "1",
            "--warmup", "0", "--contended", "--train-step"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r", [1-9]\d* busy processes beside it$", out, re.MULTILINE)
    assert re.search(r"^worst ratio [\d.]+x (meets|misses) the target of 1.5x$", out, re.MULTILINE)
    row = re.search(
        r"^train step \(ST-CNN affine, .*, batch \d+, [^)]*\): native ([\d.]+) ms, custom "
        r"([\d.]+) ms, ratio ([\d.]+)x (meets|misses) the target of 1.05x$",
        out,
        re.MULTILINE,
    )
    assert row, out
    native, custom, ratio = (float(v) for v in row.groups()[:3])
    assert native > 0 and custom > 0
    assert ratio == pytest.approx(custom / native, rel=0.05, abs=0.01)


def test_spinners_stop_when_the_benchmark_is_killed():
    script = (
        "from stn_serve.bench.contention import busy_processes\n"
        "import time\n"
        "with busy_processes(1) as spinners:\n"
        "    print(spinners[0].pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    spinner = int(bench.stdout.readline())
    bench.kill()
    bench.wait()
    deadline = time.monotonic() + 10
    while _running(spinner) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(spinner)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (an exited orphan waits, a zombie, until
    whoever adopted it reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_busy_processes_spin_until_the_block_ends():
    with busy_processes(2) as spinners:
        assert len(spinners) == 2 and all(spinner.poll() is None for spinner in spinners)
    assert all(spinner.poll() is not None for spinner in spinners)
    assert other_cores() >= 1


@pytest.mark.parametrize("text", ["256x1x42:28x28", "0x1x4x4:2x2", "4x1x4x4-2x2"])
def test_bad_case_names_the_expected_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"case must be NxCxHxW:hxw .* got"):
        parse_case(text)


def test_case_parses_to_sizes():
    assert parse_case("256x1x42x42:28x28") == (256, 1, 42, 42, 28, 28)
