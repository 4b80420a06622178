"""Domain errors <-> gRPC status codes: the server answers with this table and the client reads
answers back through it, so the two cannot drift apart. Codes are gRPC's names
(`grpc.StatusCode[name]`), so this module needs no gRPC."""

from __future__ import annotations

from stn_serve.errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotAllowedError,
    NotFoundError,
    NotReadyError,
    RequestCancelledError,
    ResourceExhaustedError,
    StnServeError,
)

#: (error type, status code name); the first type an error is an instance of decides.
STATUS_CODES: tuple[tuple[type[StnServeError], str], ...] = (
    (InvalidInputError, "INVALID_ARGUMENT"),
    (NotFoundError, "NOT_FOUND"),
    (ResourceExhaustedError, "RESOURCE_EXHAUSTED"),
    (NotReadyError, "UNAVAILABLE"),
    (DeadlineExceededError, "DEADLINE_EXCEEDED"),
    (RequestCancelledError, "CANCELLED"),
    (NotAllowedError, "FAILED_PRECONDITION"),
)
#: What an unexpected error is answered with; the server logs the details.
INTERNAL = "INTERNAL"
INTERNAL_MESSAGE = "internal error; the server log has the details"

_ERROR_TYPES = {code: error_type for error_type, code in STATUS_CODES}


def status_of(error: BaseException) -> tuple[str, str]:
    """(status code name, client-facing message) for an error raised while answering."""
    for error_type, code in STATUS_CODES:
        if isinstance(error, error_type):
            return code, str(error)
    return INTERNAL, INTERNAL_MESSAGE


def error_type_for(code: str) -> type[StnServeError]:
    """The domain error a status code name stands for (StnServeError for any other code)."""
    return _ERROR_TYPES.get(code, StnServeError)
