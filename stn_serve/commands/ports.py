"""Refusing a busy port before a server spends its start-up loading models."""

from __future__ import annotations

import errno
import socket

from stn_serve.errors import InvalidInputError


def check_port_free(host: str, port: int, flag: str, purpose: str) -> None:
    """Raise InvalidInputError ("cannot `purpose` host:port: ...", saying what to do) when
    `host:port` cannot be bound; port 0 (any free one) always can. A race with another process
    remains possible: this check is for the common mistake of starting a second server on the
    same port."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise InvalidInputError(f"cannot {purpose} {host}: {error.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        # As the servers themselves bind: a connection of the last run in TIME_WAIT is no user.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise InvalidInputError(
                    f"cannot {purpose} {host}:{port}: the port is already in use (another "
                    f"`stn-serve serve`?); stop what listens there, or pass {flag} with a free "
                    "port (0 picks one)"
                ) from None
            raise InvalidInputError(
                f"cannot {purpose} {host}:{port} ({flag}): {error.strerror or error}"
            ) from None
