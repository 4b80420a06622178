"""`stn-serve bench serve --quick` runs end to end and prints its tables; the ratio arithmetic;
the closed-loop load over several connections.

No timing is asserted: the figures depend on the machine; the benchmark prints them.
"""

from __future__ import annotations

import json
import sys

import pytest

from stn_serve.bench.serve_load import (
    BARE_AIO,
    BARE_SYNC,
    STN_SERVE,
    STN_SERVE_NO_BATCHING,
    InProcess,
    Served,
)
from stn_serve.bench.serve_report import Ratio, compute_ratios
from stn_serve.cli import main


def test_bench_serve_quick_prints_every_setting(model_repository, tmp_path, capsys):
    figures = tmp_path / "figures.json"
    code = main(
        [
            "bench", "serve", "--repository", str(model_repository), "--model", "digits",
            "--device", "cpu", "--quick", "--json", str(figures),
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "model digits v2 (1x28x28, affine transform) on CPUExecutionProvider" in out
    assert "load average" in out
    assert "in-process: OnnxModel.predict" in out and "load from a separate process" in out

    results = json.loads(figures.read_text())
    assert [r["batch_size"] for r in results["in_process"]] == [1, 8, 32]
    assert all(r["images_per_s"] > 0 for r in results["in_process"])
    assert set(results["machine"]) == {"cpus", "load_before", "load_after"}
    settings = [
        (r["setting"], r["processes"], r["images_per_request"], r["concurrency"])
        for r in results["served"]
    ]
    assert settings == [
        *[(STN_SERVE, 1, size, c) for size in (1, 8) for c in (1, 8)],
        *[(setting, 1, size, 8) for setting in (STN_SERVE_NO_BATCHING, BARE_SYNC, BARE_AIO) for size in (1, 8)],
        *[(setting, 2, size, 8) for setting in (STN_SERVE, BARE_SYNC) for size in (1, 8)],
    ]  # fmt: skip
    for row in results["served"]:
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["server_cpu_us"] > 0 and row["client_cpu_us"] > 0
        if row["setting"] == STN_SERVE_NO_BATCHING:  # each request is a batch of its own images
            assert row["mean_batch"] == row["images_per_request"]
        elif row["setting"] == STN_SERVE:
            assert row["images_per_request"] <= row["mean_batch"] <= 64.0
        else:
            assert row["mean_batch"] is None  # a bare server runs no model
        assert any(
            line.startswith(row["setting"])
            and line.split()[-13:-9] == [str(row[k]) for k in ("processes", "images_per_request", "concurrency", "requests")]
            for line in out.splitlines()
        ), row  # fmt: skip
    rates = {r["batch_size"]: r["images_per_s"] for r in results["in_process"]}
    best = max(rates, key=rates.get)
    assert set(results["ratios"]) == {
        f"1 img/req: served c8 / in-process best (batch {best})",
        "1 img/req: batching on / off at c8",
        "1 img/req: p99 c1 - in-process single-image p50",
        f"1 img/req: server CPU per request / {BARE_SYNC}'s, c8",
        f"1 img/req: served / {BARE_SYNC} requests/s, c8, 1 process",
        f"1 img/req: server CPU per request / {BARE_AIO}'s, c8",
        f"1 img/req: served / {BARE_AIO} requests/s, c8, 1 process",
        f"1 img/req: served / {BARE_SYNC} requests/s, c8, 2 processes",
        f"8 img/req: served c8 / in-process best (batch {best})",
        "8 img/req: batching on / off at c8",
        f"8 img/req: server CPU per request / {BARE_SYNC}'s, c8",
        f"8 img/req: served / {BARE_SYNC} requests/s, c8, 1 process",
        f"8 img/req: server CPU per request / {BARE_AIO}'s, c8",
        f"8 img/req: served / {BARE_AIO} requests/s, c8, 1 process",
        f"8 img/req: served / {BARE_SYNC} requests/s, c8, 2 processes",
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
    return [InProcess(batch, rate, 1.0, 2.0) for batch, rate in zip((1, 8, 64), rates)]


def served(setting, *rows, images_per_request=1, processes=1):
    """Rows of (concurrency, images/s, p99 ms, server CPU us a request)."""
    return [
        Served(setting, processes, images_per_request, c, 100, rate, 1.0, 2.0, p99, 50.0, cpu, 1.0, 0, "")
        for c, rate, p99, cpu in rows
    ]  # fmt: skip


def measured(size: int = 1, on=4500.0, off=1000.0, bare=6000.0, aio=9000.0, two=(5000.0, 8000.0)):
    """A run's rows for one request size at concurrency 1 and 32."""
    return [
        *served(STN_SERVE, (1, 500.0, 1.5, 900.0), (32, on, 9.0, 600.0), images_per_request=size),
        *served(STN_SERVE_NO_BATCHING, (32, off, 30.0, 900.0), images_per_request=size),
        *served(BARE_SYNC, (32, bare, 5.0, 400.0), images_per_request=size),
        *served(BARE_AIO, (32, aio, 4.0, 200.0), images_per_request=size),
        *served(STN_SERVE, (32, two[0], 8.0, 500.0), images_per_request=size, processes=2),
        *served(BARE_SYNC, (32, two[1], 4.0, 300.0), images_per_request=size, processes=2),
    ]


def test_ratios_against_each_baseline_and_target():
    ratios = compute_ratios(in_process(1000.0, 5000.0, 4000.0), measured())
    assert ratios["1 img/req: served c32 / in-process best (batch 8)"] == Ratio(0.9, "", None, "x")
    # the gain's ceiling: in-process best (5000/s at batch 8) over batch 1 (1000/s)
    assert ratios["1 img/req: batching on / off at c32"] == Ratio(4.5, ">= 3.0 x", True, "x", 5.0)
    # single-image latency against the in-process batch-1 p50 (1.0 ms)
    assert ratios["1 img/req: p99 c1 - in-process single-image p50"] == Ratio(
        0.5, "<= 1.0 ms", True, " ms"
    )
    assert ratios[f"1 img/req: server CPU per request / {BARE_SYNC}'s, c32"] == Ratio(
        1.5, "<= 2.0 x", True, "x"
    )
    assert ratios[f"1 img/req: served / {BARE_SYNC} requests/s, c32, 1 process"] == Ratio(
        0.75, ">= 0.6 x", True, "x"
    )
    assert ratios[f"1 img/req: server CPU per request / {BARE_AIO}'s, c32"] == Ratio(
        3.0, "", None, "x"
    )
    assert ratios[f"1 img/req: served / {BARE_AIO} requests/s, c32, 1 process"] == Ratio(
        0.5, "", None, "x"
    )
    two = ratios[f"1 img/req: served / {BARE_SYNC} requests/s, c32, 2 processes"]
    assert two == Ratio(0.625, ">= 0.6 x", True, "x")  # fmt: skip


def test_each_request_size_is_judged_against_its_own_targets():
    ratios = compute_ratios(
        in_process(1000.0, 5000.0, 4000.0),
        measured(1, on=1500.0, two=(3000.0, 8000.0)) + measured(64, on=4700.0),
    )
    assert ratios[f"1 img/req: served / {BARE_SYNC} requests/s, c32, 1 process"].met is False
    assert ratios[f"1 img/req: served / {BARE_SYNC} requests/s, c32, 2 processes"].met is False
    many = ratios["64 img/req: served c32 / in-process best (batch 8)"]
    assert (many.value, many.target, many.met) == (0.94, ">= 0.9 x", True)
    # requests/s count requests: 4700 images/s of 64-image requests against 6000 requests/s
    bare = ratios[f"64 img/req: served / {BARE_SYNC} requests/s, c32, 1 process"]
    assert bare.value == pytest.approx(4700 / 64 / (6000 / 64)) and bare.target == ""
    assert not any(name.startswith("64 img/req: p99") for name in ratios)


def test_ratios_without_successful_requests_are_not_judged():
    failed = measured()
    for row in failed:
        row.requests = 0
    ratios = compute_ratios(in_process(1000.0, 5000.0, 4000.0), failed)
    assert all(ratio.met is None for ratio in ratios.values())


@pytest.mark.parametrize(
    "flag", ["--batch-sizes", "--concurrency", "--images-per-request", "--processes"]
)
@pytest.mark.parametrize("bad", ["0,1", "", "a"])
def test_list_flags_reject_bad_values(flag, bad, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "serve", flag, bad])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error, error


def test_closed_loop_sends_exactly_the_bounded_number_of_requests_over_every_connection():
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from stn_serve.client.load import run_load

    answered, peers = [], set()

    def predict(request, context):
        answered.append(request)
        peers.add(context.peer())
        return b""

    handler = grpc.method_handlers_generic_handler(
        "stn.v1.StnService", {"Predict": grpc.unary_unary_rpc_method_handler(predict)}
    )
    server = grpc.server(ThreadPoolExecutor(8), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = run_load(
            f"127.0.0.1:{port}", b"payload", 8, 30.0, 50, warmup_requests=10, connections=4
        )
    finally:
        server.stop(grace=None)
    assert len(result.latencies_s) == 50 and result.errors == 0
    assert len(answered) == 60 and set(answered) == {b"payload"}
    assert len(peers) == 4  # one client port per connection
    assert 0 < max(result.latencies_s) <= result.elapsed_s
