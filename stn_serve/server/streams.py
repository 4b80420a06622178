"""Bidirectional streams: start each request as it arrives, answer in arrival order.

A reader task starts every request of a stream (a task on the event loop that goes through the
request path: admitted, decoded, queued) while earlier ones are still running, so requests in
flight on one stream can share a batch; at most STREAM_WINDOW are started ahead of the answers,
so a client that sends faster than it reads holds a bounded amount. The RPC's own task writes
the answers in order.

A stream with nothing in flight that receives no request for `idle_timeout_s` is closed with
DEADLINE_EXCEEDED, and so is one whose client reads no answer for that long. When the server
drains, a stream stops reading, answers every request it has read, then ends with UNAVAILABLE so
that its client resends the rest to another replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from stn_serve.server.status import Call

log = logging.getLogger(__name__)

# Requests of one stream that may be started (decoded, queued) ahead of the answer being written.
STREAM_WINDOW = 32


@dataclass(frozen=True)
class StreamLimits:
    idle_timeout_s: float
    draining: asyncio.Event  # set when the server starts draining


# Why the reader stopped, handed to the writer after the last started request.
_END = "end"
_IDLE = "idle"
_DRAINING = "draining"
_UNREADABLE = "unreadable"

# start(request) -> (call, task): begins answering one request; the task returns its response.
Start = Callable[[object], tuple[Call, asyncio.Task]]
# finish(call, task) -> the message to write; raises to end the stream with call's status.
Finish = Callable[[Call, asyncio.Task], Awaitable[object]]

ENDINGS = {
    _IDLE: (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        (
            "no request for {idle:g} s on this stream (--stream-idle-timeout-s); open a new "
            "stream when there is more to send"
        ),
    ),
    _DRAINING: (
        grpc.StatusCode.UNAVAILABLE,
        (
            "the server is shutting down; every request read on this stream was answered, send "
            "the rest to another replica"
        ),
    ),
    _UNREADABLE: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "a message on this stream could not be parsed; the requests before it were answered",
    ),
}


class _Reader:
    def __init__(self, context, start: Start, limits: StreamLimits):
        self.context = context
        self.start = start
        self.limits = limits
        self.started: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)
        self.outstanding = 0  # started and not yet answered

    async def run(self) -> None:
        """Start each request in turn, then hand the writer why the reading stopped."""
        draining = asyncio.ensure_future(self.limits.draining.wait())
        try:
            while not isinstance(request := await self._next(draining), str):
                call, task = self.start(request)
                self.outstanding += 1
                await self.started.put((call, task))
        except Exception:
            log.info("unreadable message on a stream", exc_info=True)
            request = _UNREADABLE
        finally:
            draining.cancel()
        await self.started.put(request)

    async def _next(self, draining: asyncio.Future):
        """The next request, or why the stream stops reading (end, idle, draining)."""
        if draining.done():
            return _DRAINING
        read = asyncio.ensure_future(self.context.read())
        try:
            while True:
                done, _ = await asyncio.wait(
                    (read, draining),
                    timeout=self.limits.idle_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if read in done:
                    request = read.result()
                    return _END if request is grpc.aio.EOF else request
                if draining in done:
                    return _DRAINING
                if not self.outstanding:
                    return _IDLE
        finally:
            if not read.done():
                read.cancel()


async def answer_stream(context, start: Start, finish: Finish, limits: StreamLimits) -> None:
    """Answer every request of the stream on `context` in order (see the module's docstring)."""
    reader = _Reader(context, start, limits)
    reading = asyncio.ensure_future(reader.run())
    current: asyncio.Task | None = None
    try:
        while not isinstance(item := await reader.started.get(), str):
            call, current = item
            message = await finish(call, current)
            current = None
            await _write(context, message, limits.idle_timeout_s)
            reader.outstanding -= 1
        if item in ENDINGS:
            code, message = ENDINGS[item]
            await context.abort(code, message.format(idle=limits.idle_timeout_s))
    finally:
        reading.cancel()
        # Requests started and never answered (the stream failed or was cancelled) stop here.
        unanswered = [current] if current else []
        while not reader.started.empty():
            item = reader.started.get_nowait()
            if not isinstance(item, str):
                unanswered.append(item[1])
        for task in unanswered:
            task.cancel()


async def _write(context, message, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(context.write(message), timeout_s)
    except asyncio.TimeoutError:
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the client read no answer for {timeout_s:g} s (--stream-idle-timeout-s)",
        )
