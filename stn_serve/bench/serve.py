"""`stn-serve bench serve`: the served model over gRPC against the same model in-process.

Measured in one run, on one model:
1. in-process ONNX Runtime (`OnnxModel.predict`, no gRPC, ONNX Runtime's default threads) over a
   sweep of batch sizes: images/s per batch size, and the single-image latency (batch 1);
2. for each request size (`--images-per-request`, default 1 and 64 images a request): the server
   with dynamic batching on and off under closed-loop load at each concurrency from a separate
   client process: images/s, p50/p90/p99 latency and CPU per request on each side; the same load
   on a bare gRPC server that answers a canned response shows what gRPC Python alone costs
   (`serve_load`);
3. the ratios against the targets, per request size, each throughput ratio beside its ceiling
   where one follows from the in-process figures (`serve_report`).

The measuring is torch-free; only the default model (no --repository) needs torch, to export a
freshly initialised ST-CNN (`default_model`, on the training side).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from stn_serve.contract import DEVICES

HELP = (
    "served throughput and latency over gRPC, with and without dynamic batching, "
    "vs in-process ONNX Runtime"
)


def positive_ints(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. "1,8,32"."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 1,8,32, got {text!r}"
        )
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--repository",
        type=Path,
        default=None,
        help="model repository to serve; default: export a freshly initialised digits-sized "
        "ST-CNN into a temporary one (needs torch)",
    )
    add("--model", type=str, default="", help="model name (empty: the only one)")
    add("--version", type=int, default=0, help="model version (0: the newest)")
    add("--device", choices=DEVICES, default="auto", help="ONNX Runtime device")
    add(
        "--intra-op-threads",
        type=int,
        default=1,
        help="the server's ONNX Runtime threads within an op; 0 = its default (the in-process "
        "baseline always runs with ONNX Runtime's default, all cores)",
    )
    add(
        "--batch-sizes",
        type=positive_ints,
        default=[1, 2, 4, 8, 16, 32, 64],
        metavar="N,N,...",
        help="in-process batch sizes to sweep",
    )
    add(
        "--concurrency",
        type=positive_ints,
        default=[1, 8, 32],
        metavar="N,N,...",
        help="requests in flight for the served measurements",
    )
    add(
        "--images-per-request",
        type=positive_ints,
        default=[1, 64],
        metavar="N,N,...",
        help="images in each served request; each value is measured (and its ratios printed) "
        "on its own",
    )
    add(
        "--instances",
        type=int,
        default=2,
        help="the server's ONNX Runtime runs of the model at once (each a batch); on a CPU, "
        "instances x intra-op threads = cores keeps every core on the model",
    )
    add(
        "--max-batch-size",
        type=int,
        default=64,
        help="server's dynamic batching limit when batching is on (off = 1)",
    )
    add(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="server's wait for a batch to fill when batching is on",
    )
    add(
        "--duration-s",
        type=float,
        default=3.0,
        help="measuring time per setting (each also stops at --max-requests)",
    )
    add(
        "--max-requests",
        type=int,
        default=50_000,
        help="most requests (or in-process runs) per setting",
    )
    add(
        "--quick",
        action="store_true",
        help="a few seconds in all: batch sizes 1,8,32, concurrency 1,8, 1 and 8 images per "
        "request, 0.3 s per setting",
    )
    add("--json", type=Path, default=None, help="also write every figure to this JSON file")


def run(args) -> int:
    from stn_serve.bench import serve_load, serve_report
    from stn_serve.runtime import ModelRepository, RuntimeOptions

    if args.quick:
        args.batch_sizes, args.concurrency = [1, 8, 32], [1, 8]
        args.images_per_request = [1, 8]
        args.duration_s, args.max_requests = 0.3, min(args.max_requests, 2000)
    # Each request size's own batch size is the baseline of its batching gain.
    args.batch_sizes = sorted({*args.batch_sizes, *args.images_per_request})
    load = serve_load.LoadSettings(tuple(args.concurrency), args.duration_s, args.max_requests)
    # The baseline gets ONNX Runtime's own default threading, whatever the server is set to: a
    # server setting must not also shrink what it is compared with.
    baseline_options = RuntimeOptions(device=args.device)
    runtime_options = RuntimeOptions(device=args.device, intra_op_threads=args.intra_op_threads)
    server_settings = {
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_us": args.max_queue_delay_us,
        "instances": args.instances,
    }
    with tempfile.TemporaryDirectory(prefix="stn-bench-") as scratch:
        repository, name = args.repository, args.model
        if repository is None:
            from stn_serve.bench.default_model import export_default_model

            repository = Path(scratch)
            name = export_default_model(repository)
        loaded = ModelRepository(repository, baseline_options).load()
        model = loaded.get(name, args.version)
        in_process = serve_load.measure_in_process(
            model, args.batch_sizes, args.duration_s, args.max_requests
        )
        requests = {size: serve_load.payloads(model, size) for size in args.images_per_request}
        provider = model.provider
        loaded.unload()
        served = []
        # spawn: a forked child would inherit gRPC's threads and the server's state.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients:
            for size, (payload, answer) in requests.items():
                for batching in (True, False):
                    served += serve_load.measure_served(
                        repository, model, runtime_options, server_settings, payload, size,
                        batching, load, clients,
                    )
                served += serve_load.measure_no_op(answer, payload, size, load, clients)
    ratios = serve_report.compute_ratios(in_process, served)
    setup = (
        f"batching on = max batch {args.max_batch_size}, queue delay {args.max_queue_delay_us} "
        f"us; both with {args.instances} instance(s) of {args.intra_op_threads or 'default'} "
        "intra-op thread(s)"
    )
    serve_report.print_report(model, provider, in_process, served, setup, ratios)
    if args.json:
        settings = {
            key: value
            for key, value in vars(args).items()
            if isinstance(value, (int, float, str, list, bool))
        }
        serve_report.write_json(args.json, model, provider, in_process, served, ratios, settings)
    if any(row.errors for row in served):
        print("some requests failed: the served figures above are not valid measurements")
        return 1
    return 0
