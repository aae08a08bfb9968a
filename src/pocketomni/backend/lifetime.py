"""Process exit while native work runs on daemon threads.

When the interpreter exits, daemon threads keep running until they next need the GIL, so a turn on
a daemon thread can be inside `llama_decode` while exit frees the model (weakref finalizers run at
exit): a use-after-free, rc -11. Instead, an exit hook takes each live model's lock (every native
call on a model and its contexts holds it) and closes the model while holding it, for good. Once the
process is exiting, other threads that ask for a model's lock are parked until the process ends, so
they never start new native work. If a native call does not finish within EXIT_WAIT_SECONDS, that
model is left allocated (the operating system reclaims it) rather than freed under the call.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import Any, Protocol

EXIT_WAIT_SECONDS = 10.0

_closing = threading.Event()
_exiting_thread: int | None = None
_registered = False
_setup_lock = threading.Lock()
_owners: weakref.WeakSet[Any] = weakref.WeakSet()


class ClosesAtExit(Protocol):
    def close_at_exit(self, deadline: float) -> None: ...


def closing() -> bool:
    """True once the process has started to exit (the exit hook is running or has run)."""
    return _closing.is_set()


def track(owner: ClosesAtExit) -> None:
    """Close `owner` (a model) at process exit with `owner.close_at_exit(deadline)`."""
    global _registered
    with _setup_lock:
        if not _registered:
            atexit.register(_close_all)
            _registered = True
        _owners.add(owner)


def _close_all() -> None:
    global _exiting_thread
    _exiting_thread = threading.get_ident()
    _closing.set()
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    for owner in list(_owners):
        owner.close_at_exit(deadline)


def _park() -> None:
    """Wait for the end of the process (only daemon threads still run while it exits)."""
    threading.Event().wait()


class ModelLock:
    """A model's re-entrant lock. Once the process is exiting, threads other than the exiting one
    that ask for it (and do not hold it already) are parked instead: they must not start native work
    on a model being freed."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if _closing.is_set() and me != _exiting_thread and self._owner != me:
            _park()
        if not self._lock.acquire(blocking, timeout):
            return False
        self._owner, self._depth = me, self._depth + 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire_for_exit(self, deadline: float) -> bool:
        """The exit hook's acquire: wait until `deadline` (time.monotonic) at most; kept for good."""
        return self.acquire(timeout=max(0.0, deadline - time.monotonic()))
