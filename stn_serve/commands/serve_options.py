"""Flags of `stn-serve serve` for model control and transport security, as parent parsers that
`serve` adds to its own, and the argparse type that checks a number's range. Light: defining
them loads neither gRPC nor ONNX Runtime."""

from __future__ import annotations

import argparse
import dataclasses

from stn_serve.runtime.options import ALL_MODELS, MODEL_CONTROL_MODES, ModelControlOptions
from stn_serve.server.options import PORTS, SECONDS, Range, ServerOptions

CONTROL = {field.name: field.default for field in dataclasses.fields(ModelControlOptions)}
SERVER = {field.name: field.default for field in dataclasses.fields(ServerOptions)}


def number(kind: type, allowed: Range):
    """An argparse type: text -> `kind` (int or float) within `allowed`, else a usage error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not allowed.holds(value):
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(
                f"expected {what} {allowed.describe().removeprefix('a finite number ')}, "
                f"got {text!r}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def model_control_options() -> argparse.ArgumentParser:
    """--model-control-mode, --repository-poll-s, --load-model (Triton's names)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--model-control-mode",
        choices=MODEL_CONTROL_MODES,
        default=CONTROL["mode"],
        help="none: load every model at start, change nothing while running; poll: also rescan "
        "the repository every --repository-poll-s and on SIGHUP (new versions load and warm up "
        "before they answer, removed ones drain first); explicit: load only --load-model at "
        "start, then only the repository extension's load and unload requests change models "
        "(one process only)",
    )
    parser.add_argument(
        "--repository-poll-s",
        type=number(float, SECONDS),
        default=CONTROL["poll_s"],
        help="seconds between repository rescans with --model-control-mode poll",
    )
    parser.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help=f"with --model-control-mode explicit, a model to load at start (repeat the flag; "
        f"{ALL_MODELS!r}: every model)",
    )
    return parser


def model_control_from(args: argparse.Namespace) -> ModelControlOptions:
    return ModelControlOptions(
        mode=args.model_control_mode,
        poll_s=args.repository_poll_s,
        load_models=tuple(args.load_model),
    )


def security_options() -> argparse.ArgumentParser:
    """TLS, mutual TLS, bearer tokens, reflection, where metrics and plaintext health listen."""
    parser = argparse.ArgumentParser(add_help=False)
    add = parser.add_argument
    add(
        "--tls-cert",
        default=None,
        help="PEM certificate chain: serve TLS (with --tls-key); reloaded for new connections "
        "when the file changes (None: plaintext)",
    )
    add(
        "--tls-key",
        default=None,
        help="PEM private key of --tls-cert, unencrypted (None: plaintext)",
    )
    add(
        "--tls-client-ca",
        default=None,
        help="PEM CA certificates: require clients to present a certificate they signed, "
        "mutual TLS; needs --tls-cert (None: no client certificate asked for)",
    )
    add(
        "--auth-token-file",
        default=None,
        help="file holding a bearer token every call must send (authorization: Bearer ...); "
        "health checks stay open. Use with TLS: without it the token travels in the clear "
        "(None: no token asked for)",
    )
    add(
        "--no-reflection",
        action="store_true",
        help="do not serve gRPC server reflection (which lists the services to anyone who "
        "connects)",
    )
    add(
        "--metrics-host",
        default=SERVER["metrics_host"],
        help="address the Prometheus endpoint binds (0.0.0.0: every interface, for a scraper "
        "on another machine)",
    )
    add(
        "--health-port",
        type=number(int, PORTS),
        default=None,
        help="also answer grpc.health.v1 Check in plaintext on this port, for probes that "
        "cannot speak TLS (Kubernetes' gRPC probes) (None: no such port)",
    )
    add(
        "--health-host",
        default=SERVER["health_host"],
        help="address --health-port binds; in a pod, the pod's own IP",
    )
    return parser


def security_from(args: argparse.Namespace) -> dict:
    """The ServerOptions fields these flags fill."""
    return {
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "auth_token_file": args.auth_token_file,
        "reflection": not args.no_reflection,
        "metrics_host": args.metrics_host,
        "health_port": args.health_port,
        "health_host": args.health_host,
    }
