"""Flags of `stn-serve serve` for model control and transport security, as parent parsers that
`serve` adds to its own. Light: defining them loads neither gRPC nor ONNX Runtime."""

from __future__ import annotations

import argparse
import dataclasses

from stn_serve.runtime.options import ALL_MODELS, MODEL_CONTROL_MODES, ModelControlOptions
from stn_serve.server.options import ServerOptions

CONTROL = {field.name: field.default for field in dataclasses.fields(ModelControlOptions)}


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
        "start, then only the repository extension's load and unload requests change models",
    )
    parser.add_argument(
        "--repository-poll-s",
        type=float,
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
    add("--tls-cert", default=None, help="PEM certificate chain: serve TLS (with --tls-key)")
    add("--tls-key", default=None, help="PEM private key of --tls-cert (unencrypted)")
    add(
        "--tls-client-ca",
        default=None,
        help="PEM CA certificates: require clients to present a certificate they signed "
        "(mutual TLS; needs --tls-cert)",
    )
    add(
        "--auth-token-file",
        default=None,
        help="file holding a bearer token every call must send (authorization: Bearer ...); "
        "health checks stay open",
    )
    add("--no-reflection", action="store_true", help="do not serve gRPC server reflection")
    add(
        "--metrics-host",
        default=ServerOptions.metrics_host,
        help="address the Prometheus endpoint binds",
    )
    add(
        "--health-port",
        type=int,
        default=None,
        help="also answer grpc.health.v1 Check in plaintext on this port, for probes that "
        "cannot speak TLS (Kubernetes' gRPC probes); off by default",
    )
    add(
        "--health-host",
        default="127.0.0.1",
        help="address --health-port binds; in a pod, the pod's own IP",
    )
    return parser
