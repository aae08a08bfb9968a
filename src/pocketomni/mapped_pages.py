"""Give the pages of a memory-mapped numpy array back to the kernel.

Weights used in place from a memory-mapped file count in the process's resident memory once touched.
When some of them are needed only once (token2wav's modulation weights, whose results are cached),
`release_file_pages` drops their pages from this process; they are read again from the file (the
mapping stays valid) if the array is ever used again.
"""

from __future__ import annotations

import mmap

import numpy as np


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    base = arr
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base


def drop_pages(mm: mmap.mmap, start: int, length: int) -> int:
    """Drop bytes [start, start + length) of a read-only file mapping from this process (`start` on a
    page boundary; best effort). Returns the bytes dropped: 0 where the platform has no madvise."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or not hasattr(mm, "madvise") or mm.closed or length <= 0:
        return 0
    try:
        mm.madvise(advice, start, length)
    except (OSError, ValueError):
        return 0
    return length


def release_file_pages(arr: np.ndarray) -> int:
    """Drop the whole pages inside `arr` if it is a view of a file mapping; returns the bytes dropped
    (0 for ordinary arrays, or where the platform has no madvise)."""
    mm = _mapping(arr)
    if mm is None or mm.closed or arr.nbytes == 0:
        return 0
    start = arr.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data
    page = mmap.PAGESIZE
    first, end = -(-start // page) * page, (start + arr.nbytes) // page * page
    return drop_pages(mm, first, end - first)
