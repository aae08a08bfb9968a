"""Bridge blocking generators (llama.cpp work) to asyncio: a worker thread per stream, prompt cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


class CancelFlag:
    """Set by the consumer to ask the producer to stop; the producer checks it once per token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()


class ThreadStream(AsyncIterator[T]):
    """An async iterator over `produce(flag)` run in a worker thread, with prompt cancellation.

    Unlike an async generator, dropping this object (e.g. `break` out of `async for`) sets the
    cancel flag at once, so the producer stops within one item even before the event loop gets
    around to finalizing anything. `aclose()` also waits for the worker to finish, and so does a
    cancelled `__anext__`, so the producer's state is consistent when they return.
    `max_ahead` bounds how many items the worker may produce before the consumer takes them.
    """

    def __init__(self, produce: Callable[[CancelFlag], Iterator[T]], max_ahead: int = 8) -> None:
        self._produce = produce
        self.flag = CancelFlag()
        self._slots = threading.Semaphore(max(1, max_ahead))
        self._queue: asyncio.Queue[object] | None = None
        self._thread: threading.Thread | None = None
        self._failure: list[BaseException] = []
        self._finished = False

    def cancel(self) -> None:
        """Ask the producer to stop (thread-safe, returns immediately)."""
        self.flag.set()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._queue = queue
        # The worker must not reference `self`: dropping the stream (break) has to trigger __del__.
        produce, flag, slots, failure = self._produce, self.flag, self._slots, self._failure

        def put(item: object) -> bool:
            while not slots.acquire(timeout=0.05):
                if flag.is_set:
                    return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                flag.set()
                return False
            return True

        def worker() -> None:
            try:
                for item in produce(flag):
                    if not put(item):
                        flag.set()  # the producer sees it at its next check (or in its finally)
            except BaseException as e:  # noqa: BLE001 -- re-raised in the consumer
                failure.append(e)
            finally:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, _END)
                except RuntimeError:
                    pass

        self._thread = threading.Thread(target=worker, name="pocketomni-turn", daemon=True)
        self._thread.start()

    async def _join(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            await asyncio.shield(asyncio.to_thread(self._thread.join))

    def __aiter__(self) -> ThreadStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        if self._thread is None:
            self._start()
        assert self._queue is not None
        try:
            item = await self._queue.get()
        except BaseException:
            self.flag.set()
            await self._join()
            self._finished = True
            raise
        if item is _END:
            self._finished = True
            await self._join()
            if self._failure:
                raise self._failure[0]
            raise StopAsyncIteration
        self._slots.release()
        return item  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Stop the producer and wait until it has finished."""
        self.flag.set()
        self._finished = True
        await self._join()

    def __del__(self) -> None:
        self.flag.set()
