"""gRPC status codes back to stn-serve's domain exceptions: the client's one place for it,
through the same table the server answers with (`stn_serve.contract.status`)."""

from __future__ import annotations

import grpc

from stn_serve.contract import error_type_for
from stn_serve.errors import StnServeError


def error_from_rpc(error: grpc.RpcError, target: str) -> StnServeError:
    """The domain exception for a failed call to `target`, carrying the server's message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return error_type_for(code.name)(f"{target}: {code.name}: {details}")
