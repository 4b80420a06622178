"""Command-line flags for a client's transport security, shared by `predict`, `batch` and the
health check. Light: defining them loads neither gRPC nor the client."""

from __future__ import annotations

import argparse


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls, --tls-ca, --tls-cert, --tls-key: how to reach a server that serves TLS."""
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, trusting the system's CA certificates (implied by --tls-ca)",
    )
    parser.add_argument(
        "--tls-ca", default=None, help="PEM file of the CA that signed the server's certificate"
    )
    parser.add_argument(
        "--tls-cert",
        default=None,
        help="PEM client certificate, for a server that requires mutual TLS (with --tls-key)",
    )
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")


def tls_arguments(args: argparse.Namespace) -> dict:
    """The `add_tls_arguments` flags as keyword arguments of `Client` / `open_channel`."""
    return {
        "tls": args.tls,
        "tls_ca": args.tls_ca,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
    }
