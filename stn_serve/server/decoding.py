"""Encoded images -> the model's input, off the event loop: they decode in a bounded pool of
threads under the limits of `stn_serve.imaging.DecodeControl` (per-image memory, a server-wide
budget, the request's deadline and cancellation). Raw tensors need none of it (a copy and a
range check: the request path converts them at once)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from stn_serve.imaging import MIB, DecodeBudget, DecodeControl


class Decoder:
    def __init__(self, threads: int, max_decode_mb: float, decode_budget_mb: float):
        self.max_image_bytes = int(max_decode_mb * MIB)
        self.budget = DecodeBudget(int(decode_budget_mb * MIB))
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    async def decode(self, codec, request, shape: tuple[int, int, int], deadline: float | None):
        """`codec.images(request, shape, control)` -> float32[N, C, H, W], in the pool. A
        cancelled caller stops the decoding at its next step."""
        control = DecodeControl(self.max_image_bytes, self.budget, deadline)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, codec.images, request, shape, control)
        except asyncio.CancelledError:
            control.cancelled.set()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
