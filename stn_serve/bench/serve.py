"""`stn-serve bench serve`: the served model over gRPC against the same model in-process and
against bare gRPC servers, every ratio measured in one run.

Measured in one run, on one model:
1. in-process ONNX Runtime (`OnnxModel.predict`, no gRPC, ONNX Runtime's default threads) over a
   sweep of batch sizes: images/s per batch size, and the single-image latency (batch 1);
2. for each request size (`--images-per-request`, default 1 and 64 images a request), under
   closed-loop load from a separate client process over several connections:
   - `stn-serve serve` with dynamic batching at each concurrency, and off at the top one;
   - bare gRPC servers answering a canned response without parsing the request (what gRPC
     Python itself costs here): the synchronous server and the asyncio one, at the top
     concurrency;
   - for each `--processes` count above 1: stn-serve and the bare synchronous server with that
     many processes on one port, at the top concurrency;
   each with images/s, p50/p90/p99 latency and CPU per request on each side (`serve_load`);
3. the ratios against the targets, per request size (`serve_report`).

The server under test serves a repository of its own holding the measured version (its files
linked, not copied), whose config.pbtxt each setting writes: a model's config.pbtxt wins over the
server's batching flags, so the settings are made where an exported model's are.

The measuring is torch-free; only the default model (no --repository) needs torch, to export a
freshly initialised ST-CNN (`default_model`, on the training side).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from stn_serve.contract import CONFIG_FILE, DEVICES, MODEL_FILE, SPEC_FILE

HELP = (
    "served throughput, latency and CPU over gRPC (1 and 2 server processes, batching on and "
    "off) vs in-process ONNX Runtime and bare gRPC servers"
)


def positive_int(text: str) -> int:
    """A positive integer."""
    values = positive_ints(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return values[0]


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
        "--processes",
        type=positive_ints,
        default=[1, 2],
        metavar="N,N,...",
        help="server process counts to measure (`serve --processes`) at the top concurrency, "
        "each against a bare server with as many processes",
    )
    add(
        "--connections",
        type=int,
        default=16,
        help="connections the load is spread over (at most one per request in flight)",
    )
    add(
        "--instances",
        type=positive_int,
        default=2,
        help="the server's ONNX Runtime runs of the model at once (each a batch); on a CPU, "
        "instances x intra-op threads = cores keeps every core on the model (written to the "
        "served model's config.pbtxt, as are the two below)",
    )
    add(
        "--max-batch-size",
        type=positive_int,
        default=64,
        help="server's dynamic batching limit when batching is on (off = 1)",
    )
    add(
        "--max-queue-delay-us",
        type=positive_int,
        default=2000,
        help="server's wait for a batch to fill when batching is on (at least 1: config.pbtxt "
        "reads 0 as unset)",
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


def served_copy(model, scratch: Path) -> Path:
    """A repository holding only `model`'s version, its files linked: the server under test
    serves it, with the config.pbtxt `write_setting` writes for each setting."""
    root = scratch / "served"
    version = root / model.name / str(model.version)
    version.mkdir(parents=True)
    for name in (MODEL_FILE, SPEC_FILE):
        (version / name).symlink_to((model.directory / name).resolve())
    return root


def write_setting(served: Path, spec, args, batching: bool) -> None:
    """The served model's config.pbtxt for one setting: batching on (--max-batch-size,
    --max-queue-delay-us) or off (max batch 1), --instances. The file, not the server's flags,
    sets them, as it does for an exported model."""
    from stn_serve.contract.model_config import config_text

    text = config_text(
        spec,
        max_batch_size=args.max_batch_size if batching else 1,
        max_queue_delay_us=args.max_queue_delay_us if batching else None,
        instances=args.instances,
    )
    (served / spec.name / CONFIG_FILE).write_text(text)


def _server_flags(args) -> list[str]:
    """`stn-serve serve` flags of the server under test (its batching is in config.pbtxt)."""
    most = max(args.concurrency)
    flags = {
        "--device": args.device,
        "--intra-op-threads": args.intra_op_threads,
        "--max-images-per-request": max(64, *args.images_per_request),
        "--max-in-flight": max(128, 2 * most),
        "--max-in-flight-per-model": max(64, 2 * most),
    }
    return [str(part) for flag in flags.items() for part in flag]


def measure_served(args, repository: Path, spec, requests: dict, clients) -> list:
    """Every served setting (see the module's docstring), each server started once on
    `repository` (see `served_copy`) and loaded with every request size."""
    from stn_serve.bench import serve_load as sl

    load = sl.LoadSettings(
        tuple(args.concurrency), args.duration_s, args.max_requests, args.connections
    )
    top = (max(args.concurrency),)
    settings = [  # (setting, processes, concurrencies)
        (sl.STN_SERVE, 1, load.concurrency),
        (sl.STN_SERVE_NO_BATCHING, 1, top),
        (sl.BARE_SYNC, 1, top),
        (sl.BARE_AIO, 1, top),
    ]
    for processes in sorted(set(args.processes) - {1}):
        settings += [(sl.STN_SERVE, processes, top), (sl.BARE_SYNC, processes, top)]
    # The bare servers answer each request size with a canned response of its size.
    answers = {len(payload): answer for payload, answer in requests.values()}
    threads = max(32, *args.concurrency)
    served = []
    for setting, processes, concurrency in settings:
        if setting in (sl.BARE_SYNC, sl.BARE_AIO):
            server = sl.bare(setting, processes, answers, threads)
        else:
            write_setting(repository, spec, args, batching=setting == sl.STN_SERVE)
            server = sl.stn_serve(repository, processes, _server_flags(args))
        with server as running:
            for size, (payload, _) in requests.items():
                served += sl.measure_load(
                    running, setting, processes, payload, size, concurrency, load, clients
                )
    return served


def run(args) -> int:
    from stn_serve.bench import serve_load, serve_report
    from stn_serve.runtime import ModelRepository, RuntimeOptions

    if args.quick:
        args.batch_sizes, args.concurrency = [1, 8, 32], [1, 8]
        args.images_per_request = [1, 8]
        args.duration_s, args.max_requests = 0.3, min(args.max_requests, 2000)
    # Each request size's own batch size is the baseline of its batching gain.
    args.batch_sizes = sorted({*args.batch_sizes, *args.images_per_request})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="stn-bench-") as scratch:
        repository, name = args.repository, args.model
        if repository is None:
            from stn_serve.bench.default_model import export_default_model

            repository = Path(scratch)
            name = export_default_model(repository)
        # The baseline gets ONNX Runtime's own default threading, whatever the server is set
        # to: a server setting must not also shrink what it is compared with.
        loaded = ModelRepository(repository, RuntimeOptions(device=args.device)).load()
        model = loaded.get(name, args.version)
        in_process = serve_load.measure_in_process(
            model, args.batch_sizes, args.duration_s, args.max_requests
        )
        requests = {size: serve_load.payloads(model, size) for size in args.images_per_request}
        provider = model.provider
        loaded.unload()
        copy = served_copy(model, Path(scratch))
        # spawn: a forked child would inherit this process's threads and ONNX Runtime state.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients:
            served = measure_served(args, copy, model.spec, requests, clients)
    ratios = serve_report.compute_ratios(in_process, served)
    setup = (
        f"stn-serve (config.pbtxt): max batch {args.max_batch_size}, queue delay "
        f"{args.max_queue_delay_us} us (batching off: max batch 1), {args.instances} "
        "instance(s) of "
        f"{args.intra_op_threads or 'default'} intra-op thread(s) per process; load over "
        f"{args.connections} connections at most"
    )
    machine = serve_report.Machine(os.cpu_count(), load_before, os.getloadavg())
    serve_report.print_report(model, provider, machine, in_process, served, setup, ratios)
    if args.json:
        settings = {
            key: value
            for key, value in vars(args).items()
            if isinstance(value, (int, float, str, list, bool))
        }
        serve_report.write_json(
            args.json, model, provider, machine, in_process, served, ratios, settings
        )
    if any(row.errors for row in served):
        print("some requests failed: the served figures above are not valid measurements")
        return 1
    return 0
