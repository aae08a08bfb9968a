"""`Closable`: the context-manager and async forms of an object's blocking `close()`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


class Closable:
    """Mix-in for objects with a blocking `close()`: `with`, `async with` and `await aclose()` (which runs
    close() in a worker thread, so the event loop is not blocked while running work stops)."""

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """`close()` in a worker thread (waits for running turns to stop)."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
