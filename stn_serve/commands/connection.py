"""Flags for talking to a model on a server, shared by `predict` and `batch`, and the predictor
they describe. Defaults are the client's own."""

from __future__ import annotations

import argparse

from stn_serve.client.defaults import DEFAULT_MAX_MESSAGE_MB, DEFAULT_TIMEOUT_S
from stn_serve.client.flags import add_tls_arguments, tls_arguments
from stn_serve.contract import DEFAULT_TOP_K

DEFAULT_SERVER = "localhost:8001"


def client_options() -> argparse.ArgumentParser:
    """Flags that choose the model, bound each request, and secure the connection."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--model", type=str, default="", help="model name (empty: the only model the server holds)"
    )
    parser.add_argument("--version", type=int, default=0, help="model version (0: the newest)")
    parser.add_argument(
        "--top-k", type=int, default=DEFAULT_TOP_K, help="classes to report per image"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="deadline in seconds for each request",
    )
    parser.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE_MB,
        help="largest gRPC message sent or received",
    )
    add_tls_arguments(parser)
    parser.add_argument(
        "--auth-token-file",
        default=None,
        help="file holding the bearer token of a server that requires one",
    )
    return parser


def remote_predictor(args):
    """A `RemotePredictor` on `args.server` with the `client_options` flags, once the server has
    described the model: no server there, or no such model, fails here, before any image is read."""
    from stn_serve.batch import RemotePredictor
    from stn_serve.client import Client
    from stn_serve.contract.auth import read_token

    client = Client(
        args.server,
        model=args.model,
        version=args.version,
        timeout=args.timeout,
        max_message_mb=args.max_message_mb,
        token=read_token(args.auth_token_file) if args.auth_token_file else None,
        **tls_arguments(args),
    )
    try:
        client.describe()
    except BaseException:
        client.close()
        raise
    return RemotePredictor(client, args.top_k)
