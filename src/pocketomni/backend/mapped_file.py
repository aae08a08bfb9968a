"""Drop the resident pages of a model file that llama.cpp memory-maps, from this process only.

On the CPU llama.cpp copies most quantized weights of a mapped file into a re-laid-out buffer of its own
(repacking); the file pages it read them from stay resident beside that copy although nothing reads
them again. `drop_mapped_pages(path)` gives every resident page of every mapping of `path` back
(madvise MADV_DONTNEED; the file is read-only and shared, so a page touched later is simply read again
from the page cache or the file). What stays mapped and in use afterwards (the weights llama.cpp did
not copy: the token table, whose untouched rows never come back, the output head, norms) is clean
file-backed memory the kernel may reclaim under pressure instead of killing the process.

`PageDropper` does it while llama.cpp loads (from its progress callback), so loading never holds the
file and the copy at once. Linux and Android only (/proc/self/maps); elsewhere these do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any

__all__ = ["PageDropper", "drop_mapped_pages", "mapped_ranges"]

MADV_DONTNEED = 4  # Linux (all architectures)


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name, use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.madvise.restype = ctypes.c_int
        return lib
    except (OSError, AttributeError, TypeError):
        return None


_LIBC = _libc() if os.path.exists("/proc/self/maps") else None


def mapped_ranges(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """(start, end) addresses of this process's mappings of `path` ([] where /proc is missing)."""
    target = os.path.realpath(path)
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].rstrip("\n") == target:
                    lo, hi = parts[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return out


def drop_mapped_pages(path: str | os.PathLike[str]) -> int:
    """Give back every resident page of every mapping of `path` in this process. Returns the bytes of
    the ranges advised (0 where the platform cannot). The mappings stay valid."""
    if _LIBC is None:
        return 0
    done = 0
    for lo, hi in mapped_ranges(path):
        if _LIBC.madvise(ctypes.c_void_p(lo), hi - lo, MADV_DONTNEED) == 0:
            done += hi - lo
    return done


class PageDropper:
    """A llama.cpp progress callback that drops the mapped file's pages every `every` of the load (the
    ctypes thunk must outlive the load: keep this object)."""

    def __init__(self, path: Path, every: float = 1 / 16) -> None:
        import llama_cpp.llama_cpp as L

        self.path, self.every, self._next = path, every, every
        self.callback = L.llama_progress_callback(self._on_progress)

    def _on_progress(self, progress: float, _user: Any) -> bool:
        if progress >= self._next:
            drop_mapped_pages(self.path)
            self._next = progress + self.every
        return True  # go on loading
