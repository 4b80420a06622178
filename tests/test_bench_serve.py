"""`stn-serve bench serve --quick` runs end to end and prints its tables; the ratio arithmetic.

No timing is asserted: the figures depend on the machine; the benchmark prints them.
"""

from __future__ import annotations

import json
import sys

import pytest

from stn_serve.bench.serve_load import BATCHING_OFF, BATCHING_ON, NO_OP, InProcess, Served
from stn_serve.bench.serve_report import Ratio, compute_ratios
from stn_serve.cli import main


def test_bench_serve_quick_prints_every_setting(model_repository, tmp_path, capsys):
    figures = tmp_path / "figures.json"
    code = main(
        [
            "bench",
            "serve",
            "--repository",
            str(model_repository),
            "--model",
            "digits",
            "--device",
            "cpu",
            "--quick",
            "--json",
            str(figures),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "model digits v2 (1x28x28, affine transform) on CPUExecutionProvider" in out
    assert "in-process: OnnxModel.predict" in out and "load from a separate process" in out

    results = json.loads(figures.read_text())
    assert [r["batch_size"] for r in results["in_process"]] == [1, 8, 32]
    assert all(r["images_per_s"] > 0 for r in results["in_process"])
    settings = [
        (r["images_per_request"], r["setting"], r["concurrency"]) for r in results["served"]
    ]
    assert settings == [
        (size, setting, c)
        for size in (1, 8)
        for setting in (BATCHING_ON, BATCHING_OFF, NO_OP)
        for c in (1, 8)
    ]
    for row in results["served"]:
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        if row["setting"] == BATCHING_OFF:  # each request is a batch of its own images
            assert row["mean_batch"] == row["images_per_request"]
        elif row["setting"] == BATCHING_ON:
            assert row["images_per_request"] <= row["mean_batch"] <= 64.0
        assert any(
            line.startswith(row["setting"])
            and line.split()[-11] == str(row["images_per_request"])
            and line.split()[-9] == str(row["requests"])
            for line in out.splitlines()
        ), row
    rates = {r["batch_size"]: r["images_per_s"] for r in results["in_process"]}
    best = max(rates, key=rates.get)
    assert set(results["ratios"]) == {
        f"1 img/req: served c8 batching / in-process best (batch {best})",
        "1 img/req: batching on / off at c8",
        "1 img/req: p99 c1 batching on - in-process single-image p50",
        "1 img/req: p99 c1 batching off - in-process single-image p50",
        f"8 img/req: served c8 batching / in-process best (batch {best})",
        "8 img/req: batching on / off at c8",
    }
    for size in (1, 8):
        ceiling = results["ratios"][f"{size} img/req: batching on / off at c8"]["ceiling"]
        assert ceiling == pytest.approx(rates[best] / rates[size])
    for name in results["ratios"]:
        assert name in out


@pytest.mark.slow
def test_bench_serve_exports_a_fresh_st_cnn_by_default(capsys):
    pytest.importorskip("torch")
    assert main(["bench", "serve", "--quick", "--device", "cpu"]) == 0
    assert "model stcnn v1 (1x28x28, affine transform)" in capsys.readouterr().out


def test_bench_serve_without_a_model_or_torch_says_what_to_pass(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["bench", "serve", "--quick"]) == 2
    assert "pass --repository DIR --model NAME" in capsys.readouterr().err


def in_process(*rates):
    return [InProcess(batch, rate, 1.0, 2.0) for batch, rate in zip((1, 8, 32), rates)]


def served(setting, *rows, images_per_request=1):
    return [
        Served(setting, images_per_request, c, 100, rate, 1.0, 2.0, p99, 50.0, 50.0, 1.0, 0, "")
        for c, rate, p99 in rows
    ]


def test_ratios_compare_against_the_best_batch_and_the_top_concurrency():
    ratios = compute_ratios(
        in_process(1000.0, 5000.0, 4000.0),
        served(BATCHING_ON, (1, 500.0, 2.5), (32, 4500.0, 9.0))
        + served(BATCHING_OFF, (1, 600.0, 4.0), (32, 1000.0, 30.0)),
    )
    served_ratio = ratios["1 img/req: served c32 batching / in-process best (batch 8)"]
    assert (served_ratio.value, served_ratio.target, served_ratio.met) == (0.9, ">= 0.8", True)
    assert served_ratio.unit == "x"
    # the gain's ceiling: in-process best (5000/s at batch 8) over batch 1 (1000/s)
    assert ratios["1 img/req: batching on / off at c32"] == Ratio(4.5, ">= 3.0", True, "x", 5.0)
    # single-image latency is the in-process batch-1 p50 (1.0 ms)
    on = ratios["1 img/req: p99 c1 batching on - in-process single-image p50"]
    assert (on.value, on.target, on.met, on.unit) == (1.5, "<= 2.0 ms", True, " ms")
    off = ratios["1 img/req: p99 c1 batching off - in-process single-image p50"]
    assert (off.value, off.target, off.met, off.unit) == (3.0, "<= 2.0 ms", False, " ms")


def test_ratios_are_judged_for_each_request_size():
    ratios = compute_ratios(
        in_process(1000.0, 5000.0, 4000.0),
        served(BATCHING_ON, (1, 500.0, 2.5), (32, 1500.0, 9.0))
        + served(BATCHING_OFF, (1, 600.0, 4.0), (32, 1000.0, 30.0))
        + served(BATCHING_ON, (1, 3000.0, 5.0), (32, 4200.0, 9.0), images_per_request=8)
        + served(BATCHING_OFF, (1, 3000.0, 5.0), (32, 4000.0, 9.0), images_per_request=8),
    )
    single = ratios["1 img/req: served c32 batching / in-process best (batch 8)"]
    assert (single.value, single.target, single.met) == (0.3, ">= 0.8", False)
    eight = ratios["8 img/req: served c32 batching / in-process best (batch 8)"]
    assert (eight.value, eight.target, eight.met) == (0.84, ">= 0.8", True)
    # batch 8 is already the best batch: batching cannot gain anything for 8 images a request
    assert ratios["8 img/req: batching on / off at c32"].ceiling == 1.0
    assert not any(name.startswith("8 img/req: p99") for name in ratios)


def test_ratios_without_successful_requests_are_not_judged():
    failed = served(BATCHING_ON, (1, 0.0, float("nan")), (8, 0.0, float("nan")))
    failed += served(BATCHING_OFF, (1, 0.0, float("nan")), (8, 0.0, float("nan")))
    for row in failed:
        row.requests = 0
    ratios = compute_ratios(in_process(1000.0, 5000.0, 4000.0), failed)
    assert len(ratios) == 4 and all(ratio.met is None for ratio in ratios.values())


@pytest.mark.parametrize("flag", ["--batch-sizes", "--concurrency", "--images-per-request"])
@pytest.mark.parametrize("bad", ["0,1", "", "a"])
def test_list_flags_reject_bad_values(flag, bad, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "serve", flag, bad])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error, error


def test_closed_loop_sends_exactly_the_bounded_number_of_requests():
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from stn_serve.client.load import run_load

    answered = []
    handler = grpc.method_handlers_generic_handler(
        "stn.v1.StnService",
        {
            "Predict": grpc.unary_unary_rpc_method_handler(
                lambda request, _: answered.append(request) or b""
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(8), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = run_load(f"127.0.0.1:{port}", b"payload", 8, 30.0, 50, warmup_requests=10)
    finally:
        server.stop(grace=None)
    assert len(result.latencies_s) == 50 and result.errors == 0
    assert len(answered) == 60 and set(answered) == {b"payload"}
    assert 0 < max(result.latencies_s) <= result.elapsed_s
