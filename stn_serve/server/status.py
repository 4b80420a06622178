"""Where every RPC is counted and timed, and its error becomes a gRPC status through the
contract's table (`stn_serve.contract.status`, which the client reads back). Client-supplied text
is cut before it reaches a message or a log line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from stn_serve.contract import status_of

log = logging.getLogger(__name__)

#: Most characters of a client-supplied string quoted in a message or a log line.
QUOTED_CHARS = 64
#: Most characters of any status message (a backstop: each message quotes clipped strings).
MESSAGE_CHARS = 1024


def clip(text: str, limit: int = QUOTED_CHARS) -> str:
    """`text` quoted for a message, cut to `limit` characters with its full length named."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def grpc_status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an error raised while answering."""
    code, message = status_of(error)
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + "..."
    return grpc.StatusCode[code], message


class Call:
    """What `counted` records about one RPC (or one message of a stream): when it arrived, its
    deadline (`time.monotonic()`, None for none), the model, which the handler sets once it
    knows it, and the status it was answered with."""

    __slots__ = ("code", "deadline", "message", "model", "start")

    def __init__(self, deadline: float | None = None):
        self.model = ""
        self.start = time.perf_counter()
        self.deadline = deadline
        self.code = grpc.StatusCode.OK
        self.message = ""


def deadline_of(context) -> float | None:
    """The RPC's deadline as a `time.monotonic()` instant; None when it has none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


@contextlib.contextmanager
def counted(metrics, method: str, call: Call):
    """Count and time one RPC (or one message of a stream) by method, model and status code, and
    log a refusal, a cancellation or an unexpected error. The error goes on, its mapped status in
    `call.code` and `call.message`. Only known model names become metric labels, so clients
    cannot grow the label set."""
    try:
        yield call
    except BaseException as error:
        _failed(method, call, error)
        raise
    finally:
        metrics.answered(method, call.model, call.code.name, time.perf_counter() - call.start)


def _failed(method: str, call: Call, error: BaseException) -> None:
    """Record in `call` the status an error (or the RPC's cancellation) ends it with, and log
    it; errors that are not exceptions (KeyboardInterrupt...) are left as they are."""
    if isinstance(error, asyncio.CancelledError):
        # The client cancelled, or the deadline passed: gRPC cancels the handler either way.
        late = call.deadline is not None and time.monotonic() >= call.deadline
        call.code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
        call.message = "deadline passed" if late else "the client cancelled the request"
        log.info("request ended by the client", extra=_fields(method, call))
    elif isinstance(error, Exception):
        call.code, call.message = grpc_status_of(error)
        if call.code == grpc.StatusCode.INTERNAL:
            log.exception("unexpected error", extra={"method": method, "model": call.model})
        else:
            log.info("request refused", extra=_fields(method, call))


def _fields(method: str, call: Call) -> dict:
    return {"method": method, "model": call.model, "code": call.code.name, "reason": call.message}


async def answered(context, metrics, method: str, work: Callable[[Call], Awaitable], call=None):
    """Answer one RPC (or one message of a stream) with `await work(call)` under `counted`,
    aborting it with the mapped status on error. (`counted` written out: this runs for every
    request, and a generator-based context manager costs more than the rest of it.)"""
    call = call or Call(deadline_of(context))
    try:
        answer = await work(call)
    except BaseException as error:
        _failed(method, call, error)
        metrics.answered(method, call.model, call.code.name, time.perf_counter() - call.start)
        if not isinstance(error, Exception):
            raise
        await context.abort(call.code, call.message)
    metrics.answered(method, call.model, call.code.name, time.perf_counter() - call.start)
    return answer
