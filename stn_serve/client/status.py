"""gRPC status codes back to stn-serve's domain exceptions: the client's one place for it, the
inverse of the server's mapping so the two cannot drift apart."""

from __future__ import annotations

import grpc

from stn_serve.errors import StnServeError
from stn_serve.server.status import CODES

_ERRORS = {code: error_type for error_type, code in CODES}


def error_from_rpc(error: grpc.RpcError, target: str) -> StnServeError:
    """The domain exception for a failed call to `target`, carrying the server's message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return _ERRORS.get(code, StnServeError)(f"{target}: {code.name}: {details}")
