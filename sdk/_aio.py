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


async def iterate_in_thread(produce: Callable[[CancelFlag], Iterator[T]]) -> AsyncIterator[T]:
    """Run `produce(flag)` in a worker thread and yield its items in the event loop.

    When the consumer stops early (break, aclose, task cancellation) the flag is set and this waits
    for the worker to finish, so the producer can leave its state consistent before anything else runs.
    Exceptions raised by the producer are re-raised in the consumer.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    flag = CancelFlag()
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            for item in produce(flag):
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as e:  # re-raised in the consumer
            failure.append(e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    thread = threading.Thread(target=worker, name="pocketomni-worker", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            yield item  # type: ignore[misc]
    finally:
        flag.set()
        # Wait for the worker without blocking the loop; shield so a second cancel cannot leave it running.
        await asyncio.shield(asyncio.to_thread(thread.join))
    if failure:
        raise failure[0]
