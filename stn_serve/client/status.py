"""gRPC status codes back to stn-serve's domain exceptions: the client's one place for it,
through the same table the server answers with (`stn_serve.contract.status`)."""

from __future__ import annotations

import re

import grpc

from stn_serve.contract import error_type_for
from stn_serve.errors import StnServeError

# What gRPC says when nothing answers at the address (refused, unresolvable, unreachable), as
# opposed to a server that answers UNAVAILABLE itself (draining, not ready).
_NO_CONNECTION = re.compile(r"failed to connect|connections to all backends failing|resolv", re.I)
NO_SERVER_HINT = (
    "no stn-serve server answers there: start one (stn-serve serve --repository export) or "
    "check the address"
)


def error_from_rpc(error: grpc.RpcError, target: str) -> StnServeError:
    """The domain exception for a failed call to `target`, carrying the server's message (and,
    when nothing answers at `target`, what to do about it)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    message = f"{target}: {code.name}: {details}"
    if code == grpc.StatusCode.UNAVAILABLE and _NO_CONNECTION.search(details or ""):
        message += f"; {NO_SERVER_HINT}"
    return error_type_for(code.name)(message)
