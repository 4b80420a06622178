"""`stn-serve serve`: serve a model repository over gRPC (stn.v1, Open Inference Protocol, health,
reflection) with Prometheus metrics. Runs with torch absent."""

from __future__ import annotations

import argparse
import dataclasses

from stn_serve.contract import DEVICES
from stn_serve.runtime.options import GRAPH_OPTIMIZATIONS, RuntimeOptions
from stn_serve.server.options import ServerOptions

# The flags' defaults are the options' own: one source for each.
SERVER = {field.name: field.default for field in dataclasses.fields(ServerOptions)}
RUNTIME = {field.name: field.default for field in dataclasses.fields(RuntimeOptions)}


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "serve",
        parents=parents,
        help="serve a model repository over gRPC",
        description="Serve every model in a model repository over gRPC until SIGTERM/SIGINT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--repository",
        default="export",
        help="model repository: <name>/<version>/model.onnx + model.json",
    )
    add("--host", default="0.0.0.0", help="address the gRPC server binds")
    add("--port", type=int, default=8001, help="gRPC port; 0 picks a free one (logged)")
    add(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus /metrics port on the same host; 0 picks a free one, -1 turns it off",
    )
    add(
        "--device",
        default=RUNTIME["device"],
        choices=DEVICES,
        help="auto: CUDA where it loads, else CPU; cuda: fail at start-up without CUDA; cpu",
    )
    add(
        "--intra-op-threads",
        type=int,
        default=RUNTIME["intra_op_threads"],
        help="ONNX Runtime threads within an op; 0 = its default",
    )
    add(
        "--inter-op-threads",
        type=int,
        default=RUNTIME["inter_op_threads"],
        help="ONNX Runtime threads across ops; 0 = its default",
    )
    add(
        "--graph-optimization",
        default=RUNTIME["graph_optimization"],
        choices=GRAPH_OPTIMIZATIONS,
        help="ONNX Runtime graph optimisation level",
    )
    add(
        "--spinning",
        action="store_true",
        help="let ONNX Runtime's threads spin-wait between runs (less latency under steady load, "
        "but each keeps a core busy while idle)",
    )
    add(
        "--workers",
        type=int,
        default=SERVER["workers"],
        help="gRPC handler threads (each in-flight request holds one)",
    )
    add(
        "--instances",
        type=int,
        default=SERVER["instances"],
        help="ONNX Runtime runs of one model version at once (each a batch); on a CPU, "
        "instances x --intra-op-threads should not exceed the cores",
    )
    add(
        "--max-batch-size",
        type=int,
        default=SERVER["max_batch_size"],
        help="most images merged into one ONNX Runtime run; 1 turns dynamic batching off",
    )
    add(
        "--max-queue-delay-us",
        type=int,
        default=SERVER["max_queue_delay_us"],
        help="how long the first request of a batch waits for others, in microseconds",
    )
    add(
        "--max-queue-size",
        type=int,
        default=SERVER["max_queue_size"],
        help="requests waiting per model version before RESOURCE_EXHAUSTED",
    )
    add(
        "--max-images-per-request",
        type=int,
        default=SERVER["max_images_per_request"],
        help="more images in one request is refused",
    )
    add(
        "--max-message-mb",
        type=float,
        default=SERVER["max_message_mb"],
        help="largest request message accepted, in MiB",
    )
    add(
        "--grace-s",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, seconds in-flight requests get to finish",
    )
    return parser


def run(args) -> int:
    from stn_serve.runtime import RuntimeOptions
    from stn_serve.server import ServerOptions, serve

    options = ServerOptions(
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
        max_images_per_request=args.max_images_per_request,
        max_message_mb=args.max_message_mb,
        workers=args.workers,
        instances=args.instances,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.host,
    )
    runtime_options = RuntimeOptions(
        device=args.device,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        graph_optimization=args.graph_optimization,
        spinning=args.spinning,
    )
    return serve(
        args.repository, f"{args.host}:{args.port}", options, runtime_options, args.grace_s
    )
