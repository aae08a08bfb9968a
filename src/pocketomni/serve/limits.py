"""Admission and size limits: a bounded number of requests generate at once, a bounded queue waits
for them, and request bodies have a size cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request

from pocketomni.serve.errors import APIError

__all__ = ["Admission", "read_body"]

DRAIN_FACTOR = 8  # bodies up to this many times the limit are read to the end before the 413


class Admission:
    """`max_active` slots, `max_queue` waiters. A request beyond the queue gets 429; one that waits
    longer than `queue_timeout` seconds gets 503."""

    def __init__(self, max_active: int, max_queue: int, queue_timeout: float) -> None:
        self.max_active, self.max_queue, self.queue_timeout = max_active, max_queue, queue_timeout
        self.active = 0
        self.waiting = 0
        self._free = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active >= self.max_active and self.waiting >= self.max_queue:
            raise APIError(429, f"the server is busy: {self.active} requests are running and {self.waiting} are "
                           "waiting (the queue is full); retry in a moment, or start the server with a larger "
                           "--max-queue", type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        async with self._free:
            self.waiting += 1
            try:
                await asyncio.wait_for(self._free.wait_for(lambda: self.active < self.max_active), self.queue_timeout)
            except asyncio.TimeoutError:
                raise APIError(503, f"no generation slot became free within {self.queue_timeout:g} s; retry later, "
                               "or start the server with a larger --queue-timeout", type="server_error",
                               code="queue_timeout", headers={"Retry-After": "5"}) from None
            finally:
                self.waiting -= 1
            self.active += 1
        try:
            yield
        finally:
            async with self._free:
                self.active -= 1
                self._free.notify()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 once it passes `limit` bytes (checked before and while reading)."""
    too_large = APIError(413, f"the request body is larger than this server's limit of {limit} bytes; send smaller "
                         "media (downscale images, shorter audio) or start the server with a larger --max-body-mb",
                         code="request_too_large")
    buf = bytearray()
    over = False
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large  # not worth reading: the client may see the connection close instead
    async for part in request.stream():
        if not over:
            buf += part
            over = len(buf) > limit
        # an oversized body is still read (and dropped), so the client gets the 413 instead of a reset
    if over or (declared is not None and declared.isdigit() and int(declared) > limit):
        raise too_large
    return bytes(buf)
