"""Bidirectional streams: start each request as it arrives, answer in arrival order.

A reader thread starts every request of a stream (validates, decodes and queues it) while earlier
ones are still running, so requests in flight on one stream can share a batch. The RPC's own
thread takes the started requests in order and waits for each one's outputs.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator

import grpc

from stn_serve.server.status import Call

# Requests of one stream that may be started (decoded, queued) ahead of the response being sent.
STREAM_WINDOW = 64
# How often a stream's threads look whether the RPC has ended while they wait on each other.
POLL_S = 0.1

# start(request, call) -> finish: validates and queues one request, recording its model in
# `call`; finish() waits for its outputs and returns the response (or raises the request's error).
Start = Callable[[object, Call], Callable[[], object]]


def started_in_order(
    request_iterator, context, start: Start, stop_at_error: bool
) -> Iterator[tuple[Call, Callable[[], object]]]:
    """(call, finish) for each request of the stream, in arrival order.

    A request that fails to start is handed on in its turn with a `finish` that raises its error;
    with `stop_at_error` it also ends the reading, so only the requests before it are answered.
    """
    started: queue.Queue = queue.Queue(maxsize=STREAM_WINDOW)
    reader = threading.Thread(
        target=_read, args=(request_iterator, context, start, started, stop_at_error), daemon=True
    )
    reader.start()
    while (item := _take_while_active(started, context)) is not None:
        yield item


def _read(request_iterator, context, start: Start, started: queue.Queue, stop_at_error: bool):
    try:
        for request in request_iterator:
            call = Call()
            try:
                finish = start(request, call)
            except Exception as error:  # noqa: BLE001 - answered in order by the RPC's thread
                if not _put_while_active(started, (call, functools.partial(_reraise, error)), context):
                    return
                if stop_at_error:
                    return
                continue
            if not _put_while_active(started, (call, finish), context):
                return
    except grpc.RpcError:
        return  # the client cancelled or the stream broke: nothing is left to answer
    finally:
        _put_while_active(started, None, context)


def _reraise(error: Exception):
    raise error


def _put_while_active(items: queue.Queue, item, context) -> bool:
    """Put `item` unless the RPC ends first (then nobody would take it); returns whether it was put."""
    while context.is_active():
        try:
            items.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _take_while_active(items: queue.Queue, context):
    """The next item, or None once the RPC has ended (the reader may never put another)."""
    while context.is_active():
        try:
            return items.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None
