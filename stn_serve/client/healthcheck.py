"""Container health check: exit 0 when the server's grpc.health.v1 status is SERVING, else 1.

    python -m stn_serve.client.healthcheck --address localhost:8001
    python -m stn_serve.client.healthcheck --address localhost:8001 \\
        --tls-ca /tls/ca.crt --tls-server-name stn-serve      # a server that serves TLS

Docker's HEALTHCHECK runs this; Kubernetes uses its native gRPC probe against the same service,
or this command as an exec probe when the server serves TLS (native probes cannot). Health
checks need no bearer token.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stn_serve.client.channel import open_channel
from stn_serve.client.flags import add_tls_arguments, tls_arguments


def check(address: str, service: str = "", timeout: float = 3.0, **tls) -> str:
    """The health status name `address` reports for `service` ("" = the whole server), or the
    gRPC status code name when the call itself fails. `tls`: `open_channel`'s TLS arguments."""
    with open_channel(address, **tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stn_serve.client.healthcheck",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--address", type=str, default="localhost:8001", help="server host:port")
    parser.add_argument(
        "--service", type=str, default="", help='health service name ("" = the whole server)'
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    add_tls_arguments(parser)
    parser.add_argument(
        "--tls-server-name",
        default=None,
        help="name to check the server's certificate against instead of --address's host "
        "(a probe inside the pod connects to localhost)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = check(
        args.address,
        args.service,
        args.timeout,
        tls_server_name=args.tls_server_name,
        **tls_arguments(args),
    )
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
