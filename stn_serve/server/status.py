"""Where every RPC is counted and timed, and its error becomes a gRPC status through the
contract's table (`stn_serve.contract.status`, which the client reads back)."""

from __future__ import annotations

import contextlib
import logging
import time

import grpc

from stn_serve.contract import status_of

log = logging.getLogger(__name__)


def grpc_status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an error raised while answering."""
    code, message = status_of(error)
    return grpc.StatusCode[code], message


class Call:
    """What `counted` records about one RPC (or one message of a stream): when it arrived, the
    model, which the handler sets once it knows it, and the status it was answered with."""

    def __init__(self):
        self.model = ""
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.message = ""


@contextlib.contextmanager
def counted(metrics, method: str, call: Call | None = None):
    """Count and time one RPC (or one message of a stream) by method, model and status code, and
    log a refusal or an unexpected error. The error goes on, its mapped status in `call.code` and
    `call.message`. Only known model names become metric labels, so clients cannot grow the
    label set."""
    call = call or Call()
    try:
        yield call
    except Exception as error:
        call.code, call.message = grpc_status_of(error)
        if call.code == grpc.StatusCode.INTERNAL:
            log.exception("unexpected error", extra={"method": method, "model": call.model})
        else:
            log.info(
                "request refused",
                extra={
                    "method": method,
                    "model": call.model,
                    "code": call.code.name,
                    "reason": call.message,
                },
            )
        raise
    finally:
        metrics.requests.labels(method, call.model, call.code.name).inc()
        metrics.latency.labels(method, call.model).observe(time.perf_counter() - call.start)


@contextlib.contextmanager
def answering(context, metrics, method: str, call: Call | None = None):
    """Answer one RPC (or one message of a stream) under `counted`, aborting it with the mapped
    status on error."""
    call = call or Call()
    try:
        with counted(metrics, method, call):
            yield call
    except Exception:  # noqa: BLE001 - every error becomes the RPC's status
        context.abort(call.code, call.message)
