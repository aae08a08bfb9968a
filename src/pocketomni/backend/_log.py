"""Routes llama.cpp / ggml / mtmd log lines to Python `logging` and keeps recent errors.

llama.cpp reports most failures (bad batch, unknown tensor, ...) only through its log, so the
backend quotes `recent_errors()` in the exceptions it raises.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
from typing import Any

import llama_cpp.llama_cpp as L

logger = logging.getLogger("pocketomni.llama")
logger.addHandler(logging.NullHandler())  # quiet unless the application configures logging

_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_lock = threading.Lock()
_recent: collections.deque[tuple[int, int, str]] = collections.deque(maxlen=32)  # (serial, level, line)
_state = {"serial": 0, "last_level": logging.DEBUG}
_installed: set[str] = set()


def _on_log(level: int, text: bytes | None, _user: Any) -> None:
    if not text:
        return
    lvl = _state["last_level"] if level == 5 else _LEVELS.get(level, logging.DEBUG)  # 5 = continuation
    _state["last_level"] = lvl
    if lvl >= logging.WARNING:
        msg = text.decode("utf-8", "replace").rstrip()
        if msg:
            with _lock:
                _state["serial"] += 1
                _recent.append((_state["serial"], lvl, msg))
            logger.log(lvl, "%s", msg)
    elif logger.isEnabledFor(lvl):
        logger.log(lvl, "%s", text.decode("utf-8", "replace").rstrip())


_callback = L.llama_log_callback(_on_log)  # module-level reference keeps the C thunk alive


def install() -> None:
    """Point llama.cpp's (and ggml's) log at our handler; idempotent."""
    if "llama" not in _installed:
        L.llama_log_set(_callback, ctypes.c_void_p(0))
        _installed.add("llama")


def install_mtmd(mtmd: Any) -> None:
    """Same for libmtmd (clip, audio and helper logs)."""
    if "mtmd" not in _installed:
        mtmd.mtmd_log_set(_callback, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(_callback, ctypes.c_void_p(0))
        _installed.add("mtmd")


def mark() -> int:
    """A marker for `recent_errors(since=...)`: the serial of the last warning/error seen."""
    with _lock:
        return _state["serial"]


def recent_errors(since: int | None = None, limit: int = 3) -> str:
    """The last error lines from llama.cpp (warnings if there are none), only those after `since`
    if given, joined."""
    with _lock:
        new = [(lv, m) for s, lv, m in _recent if since is None or s > since]
    errors = [m for lv, m in new if lv >= logging.ERROR]
    lines = errors or [m for _, m in new]
    return " | ".join(lines[-limit:]) if lines else "no details in the llama.cpp log"
