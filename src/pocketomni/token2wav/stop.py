"""A stop hook for long renders: `with stop_hook(should_stop): stream.feed(codes)`.

The DiT checks it before every transformer block and the streaming vocoder before every node, so a
cancelled render ends within one block (one `RenderStopped` raised through the call). The hook lives
in a context variable: each thread (one renderer per spoken reply) sees only its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_hook: ContextVar[Callable[[], bool] | None] = ContextVar("pocketomni_token2wav_stop", default=None)


class RenderStopped(Exception):
    """The installed should_stop() turned true mid-render; the stream is unusable afterwards."""


@contextmanager
def stop_hook(should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Install `should_stop` for token2wav work done in this thread inside the block."""
    token = _hook.set(should_stop)
    try:
        yield
    finally:
        _hook.reset(token)


def check_stop() -> None:
    """Raise RenderStopped if this thread's hook says stop (cheap when none is installed)."""
    fn = _hook.get()
    if fn is not None and fn():
        raise RenderStopped
