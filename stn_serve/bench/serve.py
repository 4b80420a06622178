"""`stn-serve bench serve`: the served model over gRPC against the same model in-process.

Measured in one run, on one model:
1. in-process ONNX Runtime (`OnnxModel.predict`, no gRPC, ONNX Runtime's default threads) over a
   sweep of batch sizes: images/s per batch size, and the single-image latency (batch 1);
2. for each request size (`--images-per-request`, default 1 and 64 images a request): the server
   (`create_server` on 127.0.0.1 port 0, in this process) with dynamic batching on and off,
   under closed-loop load at each concurrency from a separate client process
   (`stn_serve.client.load`: pre-serialised raw-tensor requests, responses not parsed):
   images/s, p50/p90/p99 latency and CPU per request on each side; the same load on a bare gRPC
   server that answers a canned response shows what gRPC Python alone costs;
3. the ratios against the targets, per request size, each throughput ratio beside its ceiling
   where one follows from the in-process figures (batching off runs each request as a batch of
   its own images, so batching can gain at most in-process best / in-process at that size).

Serving side: never imports torch at import time; only the default model (no --repository)
needs it, to export a freshly initialised ST-CNN.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stn_serve.runtime.providers import DEVICES

HELP = (
    "served throughput and latency over gRPC, with and without dynamic batching, "
    "vs in-process ONNX Runtime"
)

TARGET_SERVED_VS_INPROCESS = 0.8
TARGET_BATCHING_GAIN = 3.0
TARGET_P99_OVERHEAD_MS = 2.0


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        )
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository to serve; default: export a freshly initialised digits-sized "
        "ST-CNN into a temporary one (needs torch)",
    )
    parser.add_argument("--model", type=str, default="", help="model name (empty: the only one)")
    parser.add_argument("--version", type=int, default=0, help="model version (0: the newest)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="ONNX Runtime device")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="the server's ONNX Runtime threads within an op; 0 = its default (the in-process "
        "baseline always runs with ONNX Runtime's default, all cores)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_ints,
        default=[1, 2, 4, 8, 16, 32, 64],
        help="in-process batch sizes to sweep",
    )
    parser.add_argument(
        "--concurrency",
        type=_ints,
        default=[1, 8, 32],
        help="requests in flight for the served measurements",
    )
    parser.add_argument(
        "--images-per-request",
        type=_ints,
        default=[1, 64],
        help="images in each served request; each value is measured (and its ratios printed) "
        "on its own",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=2,
        help="the server's ONNX Runtime runs of the model at once (each a batch); on a CPU, "
        "instances x intra-op threads = cores keeps every core on the model",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=64,
        help="server's dynamic batching limit when batching is on (off = 1)",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="server's wait for a batch to fill when batching is on",
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=3.0,
        help="measuring time per setting (each also stops at --max-requests)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=50_000,
        help="most requests (or in-process runs) per setting",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds in all: batch sizes 1,8,32, concurrency 1,8, 1 and 8 images per "
        "request, 0.3 s per setting",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write every figure to this JSON file"
    )


@dataclass
class InProcess:
    batch_size: int
    images_per_s: float
    p50_ms: float
    p99_ms: float


BATCHING_ON, BATCHING_OFF, NO_OP = "batching on", "batching off", "no-op handler"


@dataclass
class Served:
    setting: str  # BATCHING_ON, BATCHING_OFF or NO_OP (gRPC alone: the floor under the server)
    images_per_request: int
    concurrency: int
    requests: int
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_us: float  # client process CPU per request
    server_cpu_us: (
        float  # this process's CPU per request (the server; nothing else runs here meanwhile)
    )
    mean_batch: float  # images per ONNX Runtime run, from the server's metrics (nan for NO_OP)
    errors: int
    first_error: str


def _json_row(row) -> dict:
    """A result row for JSON, with NaN (not measured) as null."""
    return {
        k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(row).items()
    }


def _percentiles_ms(latencies_s) -> tuple[float, float, float]:
    if len(latencies_s) == 0:
        return (float("nan"),) * 3
    p50, p90, p99 = np.percentile(np.asarray(latencies_s) * 1e3, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def measure_in_process(model, batch_sizes, duration_s: float, max_runs: int) -> list[InProcess]:
    """images/s and per-call latency of `model.predict` at each batch size, after a warm-up run."""
    rng = np.random.default_rng(0)
    results = []
    for batch_size in batch_sizes:
        images = rng.random((batch_size, *model.spec.input_shape), dtype=np.float32)
        model.predict(images)
        latencies = []
        start = time.perf_counter()
        while len(latencies) < max_runs and time.perf_counter() - start < duration_s:
            begin = time.perf_counter()
            model.predict(images)
            latencies.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - start
        p50, _, p99 = _percentiles_ms(latencies)
        results.append(InProcess(batch_size, batch_size * len(latencies) / elapsed, p50, p99))
    return results


def payloads(model, images_per_request: int) -> tuple[bytes, bytes]:
    """A serialised stn.v1 PredictRequest carrying raw float32 tensors, and a PredictResponse of
    the size the server answers it with (for the no-op server)."""
    from stn_serve._proto.stn.v1 import stn_pb2
    from stn_serve.client.tensors import to_tensor

    rng = np.random.default_rng(1)
    images = rng.random((images_per_request, *model.spec.input_shape), dtype=np.float32)
    request = stn_pb2.PredictRequest(
        model=model.name,
        version=model.version,
        top_k=1,
        images=[stn_pb2.Image(tensor=to_tensor(image)) for image in images],
    )
    crop = to_tensor(np.zeros(model.spec.crop_shape, np.float32))
    prediction = stn_pb2.Prediction(
        top_k=[stn_pb2.ClassScore(index=0, label=model.spec.labels[0], probability=1.0)],
        crop=crop,
        theta=[0.0] * model.spec.num_params,
    )
    response = stn_pb2.PredictResponse(
        model=model.name, version=model.version, predictions=[prediction] * images_per_request
    )
    return request.SerializeToString(), response.SerializeToString()


def measure_load(
    port: int,
    setting: str,
    payload: bytes,
    images_per_request: int,
    args,
    clients: ProcessPoolExecutor,
    batches=lambda: (float("nan"), 1.0),
) -> list[Served]:
    """Closed-loop load on 127.0.0.1:`port` at each concurrency, from the client process.

    batches: returns the server's running (images run, ONNX Runtime runs) totals.
    """
    from stn_serve.client.load import run_load

    results = []
    for concurrency in args.concurrency:
        warmup = 4 * concurrency
        images_before, runs_before = batches()
        cpu_start = time.process_time()
        load = clients.submit(
            run_load,
            f"127.0.0.1:{port}",
            payload,
            concurrency,
            args.duration_s,
            args.max_requests,
            warmup_requests=warmup,
        ).result()
        # Nothing but the server runs in this process meanwhile; its CPU covers the warm-up too.
        server_cpu = time.process_time() - cpu_start
        images_after, runs_after = batches()
        mean_batch = (images_after - images_before) / max(runs_after - runs_before, 1.0)
        p50, p90, p99 = _percentiles_ms(load.latencies_s)
        done = len(load.latencies_s)
        sent = max(done + load.errors, 1)
        rate = done * images_per_request / load.elapsed_s if load.elapsed_s > 0 else 0.0
        results.append(
            Served(
                setting,
                images_per_request,
                concurrency,
                done,
                rate,
                p50,
                p90,
                p99,
                1e6 * load.cpu_s / sent,
                1e6 * server_cpu / (sent + warmup),
                mean_batch,
                load.errors,
                load.first_error,
            )
        )
    return results


def measure_served(
    repository: Path,
    model,
    runtime_options,
    payload: bytes,
    images_per_request: int,
    batching: bool,
    args,
    clients: ProcessPoolExecutor,
) -> list[Served]:
    """The stn-serve server, dynamic batching on or off."""
    from stn_serve.server import create_server

    most = max(args.concurrency)
    server, port = create_server(
        repository,
        "127.0.0.1:0",
        runtime_options=runtime_options,
        max_batch_size=args.max_batch_size if batching else 1,
        max_queue_delay_us=args.max_queue_delay_us if batching else 0,
        max_queue_size=max(128, 2 * most),
        max_images_per_request=max(64, images_per_request),
        workers=max(32, most),
        instances=args.instances,
    )
    server.start()
    labels = {"model": model.name, "version": str(model.version)}

    def batches() -> tuple[float, float]:
        return (
            server.metrics.sample("stn_batch_size_sum", labels) or 0.0,
            server.metrics.sample("stn_batch_size_count", labels) or 0.0,
        )

    try:
        setting = BATCHING_ON if batching else BATCHING_OFF
        return measure_load(port, setting, payload, images_per_request, args, clients, batches)
    finally:
        server.stop(grace=None)


def measure_no_op(
    answer: bytes, payload: bytes, images_per_request: int, args, clients: ProcessPoolExecutor
) -> list[Served]:
    """A gRPC server whose Predict returns a canned answer without parsing the request: what gRPC
    Python itself costs here, the floor under the real server's latency and CPU per request."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    handler = grpc.method_handlers_generic_handler(
        "stn.v1.StnService",
        {
            "Predict": grpc.unary_unary_rpc_method_handler(lambda request, context: answer),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max(32, max(args.concurrency))), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        return measure_load(port, NO_OP, payload, images_per_request, args, clients)
    finally:
        server.stop(grace=None)


def default_repository(directory: Path) -> tuple[Path, str]:
    """Export a freshly initialised digits-sized ST-CNN into `directory`; needs torch."""
    try:
        import torch
    except ImportError:
        from stn_serve.errors import InvalidInputError

        raise InvalidInputError(
            "no --repository given and torch is not installed to export a default model; "
            "pass --repository DIR --model NAME"
        ) from None
    from stn_serve.export import export_model
    from stn_serve.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig()  # the digits defaults: 1x28x28, 10 classes, affine transformer
    labels = [str(digit) for digit in range(config.num_classes)]
    export_model(build_model(config), config, labels, directory, "stcnn", version=1)
    return directory, "stcnn"


def print_report(
    model, provider: str, in_process: list[InProcess], served: list[Served], args, ratios: dict
) -> None:
    c, h, w = model.spec.input_shape
    print(
        f"stn-serve bench serve: model {model.name} v{model.version} ({c}x{h}x{w}, "
        f"{model.spec.transform or 'no'} transform) on {provider}, {os.cpu_count()} CPU cores"
    )
    print(
        "in-process: OnnxModel.predict called from one thread, no gRPC, ONNX Runtime's default "
        "threads"
    )
    print(f"{'batch':>6} {'images/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for row in in_process:
        print(
            f"{row.batch_size:>6} {row.images_per_s:>10.0f} {row.p50_ms:>8.3f} {row.p99_ms:>8.3f}"
        )
    print(
        "served: create_server on 127.0.0.1 in this process; load from a separate process, "
        "raw float32 images in pre-serialised requests (img/req of them), responses not parsed; "
        "latency = send to answer received. batching on = max batch "
        f"{args.max_batch_size}, queue delay {args.max_queue_delay_us} us; both with "
        f"{args.instances} instance(s) of {args.intra_op_threads or 'default'} intra-op "
        f"thread(s); {NO_OP} = a bare gRPC server answering a canned response of the same size "
        "(the floor under any Python gRPC server here)"
    )
    print(
        f"{'setting':<14} {'img/req':>7} {'conc':>5} {'requests':>9} {'images/s':>10} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean batch':>10} "
        f"{'server cpu us/req':>18} {'client cpu us/req':>18} {'errors':>7}"
    )
    for row in served:
        print(
            f"{row.setting:<14} {row.images_per_request:>7} {row.concurrency:>5} "
            f"{row.requests:>9} {row.images_per_s:>10.0f} "
            f"{row.p50_ms:>8.3f} {row.p90_ms:>8.3f} {row.p99_ms:>8.3f} {row.mean_batch:>10.1f} "
            f"{row.server_cpu_us:>18.0f} {row.client_cpu_us:>18.0f} {row.errors:>7}"
        )
    for row in served:
        if row.errors:
            print(
                f"  errors ({row.setting}, {row.images_per_request} img/req, concurrency "
                f"{row.concurrency}): {row.first_error}"
            )
    print(
        "ratios (target; met?). ceiling: the most the ratio could be if serving cost nothing, "
        "from the in-process figures above"
    )
    for name, (value, target, met, unit, ceiling) in ratios.items():
        verdict = "n/a" if met is None else ("yes" if met else "NO")
        bound = "" if math.isnan(ceiling) else f"; ceiling {ceiling:.2f}{unit}"
        print(f"  {name:<64} {value:>8.2f}{unit} ({target}; {verdict}{bound})")


def _ratio(
    name: str, value: float, target: float, unit: str, measured: bool, ceiling: float = math.nan
) -> tuple[str, tuple]:
    """One ratio entry; `met` is None when an input had no successful request."""
    if unit == " ms":  # a latency overhead: at most the target
        text, met = f"<= {target} ms", value <= target
    else:  # a throughput ratio: at least the target
        text, met = f">= {target}", value >= target
    return name, (
        value if measured else float("nan"),
        text,
        met if measured else None,
        unit,
        ceiling,
    )


def compute_ratios(in_process: list[InProcess], served: list[Served]) -> dict:
    """name -> (value, target text, met or None when not measured, unit, ceiling or nan), for
    each request size measured.

    The batching gain's ceiling: with batching off each request runs as one batch of its own
    images, so even free serving gains at most in-process best / in-process at that batch size.
    """
    best = max(in_process, key=lambda r: r.images_per_s)
    by_batch = {r.batch_size: r for r in in_process}
    single = by_batch.get(1)
    ratios: dict = {}
    for size in sorted({r.images_per_request for r in served}):
        rows = [r for r in served if r.images_per_request == size]
        top = max(r.concurrency for r in rows)
        on = {r.concurrency: r for r in rows if r.setting == BATCHING_ON}
        off = {r.concurrency: r for r in rows if r.setting == BATCHING_OFF}
        own = by_batch.get(size)
        ratios.update(
            [
                _ratio(
                    f"{size} img/req: served c{top} batching / in-process best (batch "
                    f"{best.batch_size})",
                    on[top].images_per_s / best.images_per_s,
                    TARGET_SERVED_VS_INPROCESS,
                    "x",
                    on[top].requests > 0,
                ),
                _ratio(
                    f"{size} img/req: batching on / off at c{top}",
                    on[top].images_per_s / max(off[top].images_per_s, 1e-9),
                    TARGET_BATCHING_GAIN,
                    "x",
                    on[top].requests > 0 and off[top].requests > 0,
                    best.images_per_s / own.images_per_s if own else math.nan,
                ),
            ]
        )
        if single is not None and size == 1 and 1 in on:
            for mode, by_concurrency in (("on", on), ("off", off)):
                ratios.update(
                    [
                        _ratio(
                            f"{size} img/req: p99 c1 batching {mode} - in-process single-image p50",
                            by_concurrency[1].p99_ms - single.p50_ms,
                            TARGET_P99_OVERHEAD_MS,
                            " ms",
                            by_concurrency[1].requests > 0,
                        )
                    ]
                )
    return ratios


def run(args) -> int:
    from stn_serve.runtime import ModelRepository, RuntimeOptions

    if args.quick:
        args.batch_sizes, args.concurrency = [1, 8, 32], [1, 8]
        args.images_per_request = [1, 8]
        args.duration_s, args.max_requests = 0.3, min(args.max_requests, 2000)
    # Each request size's own batch size is the baseline of its batching gain.
    args.batch_sizes = sorted({*args.batch_sizes, *args.images_per_request})
    # The baseline gets ONNX Runtime's own default threading, whatever the server is set to: a
    # server setting must not also shrink what it is compared with.
    baseline_options = RuntimeOptions(device=args.device)
    runtime_options = RuntimeOptions(device=args.device, intra_op_threads=args.intra_op_threads)
    with tempfile.TemporaryDirectory(prefix="stn-bench-") as scratch:
        repository, name = (
            (args.repository, args.model) if args.repository else default_repository(Path(scratch))
        )
        loaded = ModelRepository(repository, baseline_options).load()
        model = loaded.get(name, args.version)
        in_process = measure_in_process(model, args.batch_sizes, args.duration_s, args.max_requests)
        requests = {size: payloads(model, size) for size in args.images_per_request}
        provider = model.provider
        loaded.unload()
        served = []
        # spawn: a forked child would inherit gRPC's threads and the server's state.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients:
            for size, (payload, answer) in requests.items():
                for batching in (True, False):
                    served += measure_served(
                        repository,
                        model,
                        runtime_options,
                        payload,
                        size,
                        batching,
                        args,
                        clients,
                    )
                served += measure_no_op(answer, payload, size, args, clients)
    ratios = compute_ratios(in_process, served)
    print_report(model, provider, in_process, served, args, ratios)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": {"name": model.name, "version": model.version, "provider": provider},
                    "in_process": [_json_row(r) for r in in_process],
                    "served": [_json_row(r) for r in served],
                    "ratios": {
                        k: {
                            "value": None if math.isnan(v) else v,
                            "target": t,
                            "met": m,
                            "ceiling": None if math.isnan(c) else c,
                        }
                        for k, (v, t, m, _, c) in ratios.items()
                    },
                    "settings": {
                        k: v
                        for k, v in vars(args).items()
                        if isinstance(v, (int, float, str, list, bool))
                    },
                },
                indent=2,
                allow_nan=False,
            )
        )
    if any(row.errors for row in served):
        print("some requests failed: the served figures above are not valid measurements")
        return 1
    return 0
