"""`stn-serve serve`: serve a model repository over gRPC (stn.v1, Open Inference Protocol, health,
reflection) with Prometheus metrics, in one process or several. Runs with torch absent."""

from __future__ import annotations

import dataclasses
import logging

from stn_serve.commands.formatting import HelpFormatter
from stn_serve.commands.serve_options import (
    SERVER,
    model_control_options,
    number,
    security_options,
)
from stn_serve.contract import CONFIG_FILE, DEVICES
from stn_serve.runtime.options import GRAPH_OPTIMIZATIONS, RuntimeOptions
from stn_serve.server.options import LOOPBACK, PORTS, RANGES, Range

log = logging.getLogger(__name__)

# The flags' defaults are the options' own: one source for each.
RUNTIME = {field.name: field.default for field in dataclasses.fields(RuntimeOptions)}
THREADS = Range(0, 1024)  # ONNX Runtime's pools; 0 lets it choose
METRICS_PORTS = Range(-1, PORTS.high)
PROCESSES = Range(1, 256)


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "serve",
        parents=[*parents, model_control_options(), security_options()],
        help="serve a model repository over gRPC",
        description="Serve a Triton-layout model repository (<model>/<version>/model.onnx, "
        f"<model>/{CONFIG_FILE}) over gRPC until SIGTERM/SIGINT (which drain it: health "
        "NOT_SERVING, --drain-delay-s, then accepted requests finish within --grace-s). "
        "SIGHUP never stops it: it rescans the repository with --model-control-mode poll, and "
        "is logged and ignored otherwise. Each model's config.pbtxt is authoritative where it "
        "sets a field (max_batch_size, dynamic_batching.max_queue_delay_microseconds, "
        "instance_group count, version_policy); --max-batch-size, --max-queue-delay-us and "
        "--instances are the defaults where it does not. Listens on 127.0.0.1 unless --host "
        "says otherwise (warning when another address is bound without TLS).",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument

    def server_flag(name: str, help: str, kind: type = int) -> None:
        """A flag filling the ServerOptions field of the same name, checked against its range."""
        field = name.removeprefix("--").replace("-", "_")
        add(name, type=number(kind, RANGES[field]), default=SERVER[field], help=help)

    add(
        "--repository",
        default="export",
        help="model repository: <name>/<version>/model.onnx + model.json",
    )
    add(
        "--host",
        default=LOOPBACK,
        help="address the gRPC server binds; 0.0.0.0 for every interface (with --tls-cert, or "
        "behind a network you trust)",
    )
    add(
        "--port",
        type=number(int, PORTS),
        default=8001,
        help="gRPC port; 0 picks a free one (logged)",
    )
    add(
        "--metrics-port",
        type=number(int, METRICS_PORTS),
        default=8002,
        help="Prometheus /metrics port on --metrics-host; 0 picks a free one, -1 turns it off",
    )
    add(
        "--processes",
        type=number(int, PROCESSES),
        default=1,
        help="server processes sharing the port (SO_REUSEPORT), each with its own ONNX Runtime "
        "sessions; they handle requests on that many cores (one metrics endpoint sums them)",
    )
    add(
        "--device",
        default=RUNTIME["device"],
        choices=DEVICES,
        help="auto: CUDA where it loads, else CPU; cuda: fail at start-up without CUDA; cpu",
    )
    add(
        "--intra-op-threads",
        type=number(int, THREADS),
        default=RUNTIME["intra_op_threads"],
        help="ONNX Runtime threads within an op; 0 = its default",
    )
    add(
        "--inter-op-threads",
        type=number(int, THREADS),
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
    server_flag(
        "--instances",
        "ONNX Runtime runs of one model version at once (each a batch); on a CPU, "
        "processes x instances x --intra-op-threads should not exceed the cores. A model's "
        f"{CONFIG_FILE} instance_group count wins where it has one (export writes none)",
    )
    server_flag(
        "--max-batch-size",
        "most images merged into one ONNX Runtime run; 1 turns dynamic batching off. A model's "
        f"{CONFIG_FILE} max_batch_size wins where it has one (export writes one: edit the file "
        "to change an exported model's)",
    )
    server_flag(
        "--max-queue-delay-us",
        "how long the first request of a batch waits for others, in microseconds. A model's "
        f"{CONFIG_FILE} dynamic_batching.max_queue_delay_microseconds wins where it sets one "
        "above 0 (export sets none)",
    )
    server_flag(
        "--max-in-flight",
        "requests in a server process at once (decoding, queued or running); one more is "
        "RESOURCE_EXHAUSTED at once",
    )
    server_flag(
        "--max-in-flight-per-model",
        "the same bound for each model, so one busy model cannot take every place",
    )
    server_flag("--max-images-per-request", "more images in one request is refused")
    server_flag("--max-message-mb", "largest request message accepted, in MiB", float)
    server_flag("--decode-threads", "threads decoding PNG/JPEG uploads")
    server_flag(
        "--max-decode-mb",
        "memory one PNG/JPEG may take to decode, estimated from its header; more is refused "
        "before decoding",
        float,
    )
    server_flag(
        "--decode-budget-mb",
        "memory all decodes in flight may take together; a decode waits for room",
        float,
    )
    server_flag("--max-streams-per-connection", "concurrent RPCs on one HTTP/2 connection")
    server_flag(
        "--stream-idle-timeout-s",
        "a stream with nothing in flight and no request for this long is closed, and so is "
        "one whose client reads no answer for this long",
        float,
    )
    server_flag(
        "--keepalive-s",
        "ping a connection idle this long; close it when no answer comes within "
        f"{SERVER['keepalive_timeout_s']:g} s",
        float,
    )
    server_flag("--max-connection-idle-s", "close a connection with no RPC for this long", float)
    server_flag(
        "--max-connection-age-s",
        "close a connection after this long (its RPCs get "
        f"{SERVER['max_connection_age_grace_s']:g} s to finish), so clients spread over new "
        "replicas",
        float,
    )
    server_flag(
        "--drain-delay-s",
        "on SIGTERM/SIGINT, seconds health reads NOT_SERVING while requests are still accepted "
        "(set it longer than the readiness probe's period)",
        float,
    )
    server_flag(
        "--grace-s",
        "then, seconds accepted requests get to finish",
        float,
    )
    return parser


def run(args) -> int:
    from stn_serve.commands.ports import check_port_free
    from stn_serve.commands.serve_options import model_control_from, security_from
    from stn_serve.contract.auth import read_token
    from stn_serve.errors import InvalidInputError
    from stn_serve.runtime import RuntimeOptions
    from stn_serve.server import ServerOptions, serve, serve_processes
    from stn_serve.server.options import exposed_in_plaintext
    from stn_serve.server.tls_files import check_certificate_files

    flags = {name: value for name, value in vars(args).items() if name in RANGES}
    options = ServerOptions(
        **flags,
        **security_from(args),
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        model_control=model_control_from(args),
    )
    if args.processes > 1 and options.model_control.mode == "explicit":
        raise InvalidInputError(
            "--model-control-mode explicit takes one process: a load or unload request reaches "
            "only the process whose connection it came on, so the processes would serve "
            "different models; use --model-control-mode poll (every process follows the "
            "folder) or --processes 1"
        )
    # Refused once here, with what is wrong, rather than by every server process.
    if options.tls:
        check_certificate_files(options.tls_cert, options.tls_key, options.tls_client_ca)
    if options.auth_token_file is not None:
        read_token(options.auth_token_file)
    check_port_free(args.host, args.port, "--port", "bind")
    if args.metrics_port > 0:
        check_port_free(args.metrics_host, args.metrics_port, "--metrics-port", "serve metrics on")
    if args.health_port:
        check_port_free(args.health_host, args.health_port, "--health-port", "answer health on")
    if exposed_in_plaintext(args.host, options.tls):
        log.warning(
            "serving plaintext gRPC beyond this machine: anyone on the network path can read "
            "and alter requests and answers (and bearer tokens); pass --tls-cert/--tls-key, or "
            "bind 127.0.0.1",
            extra={"host": args.host},
        )
    runtime_options = RuntimeOptions(
        device=args.device,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        graph_optimization=args.graph_optimization,
        spinning=args.spinning,
    )
    if args.processes > 1:
        return serve_processes(
            args.processes, args.repository, args.host, args.port, options, runtime_options
        )
    return serve(args.repository, args.host, args.port, options, runtime_options)
