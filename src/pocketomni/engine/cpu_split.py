"""How a pipelined spoken reply shares the cores, and the BLAS thread count that token2wav runs with.

Stages: thinker and talker decodes are llama.cpp (memory-bound matrix-vector work: a second thread
helps less than it does for compute), token2wav is numpy float32 GEMMs (FLOP-bound: scales with
threads). So token2wav gets what the two decoders leave, the decoders a quarter of the cores each. Up to
4 cores token2wav's DiT and vocoder run on two threads of one BLAS thread each (`vocoder_thread`), and a
stage running alone takes the cores the others leave (`alone_threads`; speech_pipeline module doc).

BLAS threads: numpy's OpenBLAS keeps one process-wide thread count (its pool serves whichever thread
calls it). `blas_threads()` finds the loaded OpenBLAS through ctypes and sets that count; with another
BLAS (MKL, Accelerate) it returns None and token2wav keeps the library's own count (set
OPENBLAS_NUM_THREADS / MKL_NUM_THREADS before starting Python to limit it).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["CoreShare", "StageThreads", "alone_threads", "blas_threads", "set_blas_threads", "split_threads", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class StageThreads:
    """Threads per stage of a pipelined spoken reply: thinker and talker (llama.cpp), token2wav (BLAS).
    `vocoder_thread`: token2wav's vocoder runs on a thread of its own beside its DiT (each with
    `token2wav` BLAS threads; OpenBLAS has one count per process)."""

    thinker: int
    talker: int
    token2wav: int
    vocoder_thread: bool = False


def split_threads(cpus: int) -> StageThreads:
    """The default split of `cpus` cores (module doc): up to 4 cores every stage has one thread and the
    vocoder its own (2 cores: four threads, oversubscribed; 4: one core each), 8 -> 2/2/4, 16 -> 4/4/8."""
    cpus = max(1, cpus)
    dec = max(1, cpus // 4)
    share = cpus - 2 * dec
    if share <= 2:
        return StageThreads(thinker=dec, talker=dec, token2wav=1, vocoder_thread=True)
    return StageThreads(thinker=dec, talker=dec, token2wav=share)


def alone_threads(cpus: int, threads: StageThreads) -> int:
    """Threads for the thinker or one half of token2wav while it runs alone (the other heavy stages idle
    or done): every core but the talker's, or all of them when that would leave fewer than 2."""
    return cpus - threads.talker if cpus - threads.talker >= 2 else max(1, cpus)


_lib_lock = threading.Lock()
_lib: list[Any] = []  # [(get, set)] once looked up; [None] when no OpenBLAS is loaded
_SYMBOLS = (  # (get, set) names: numpy's wheels (scipy-openblas, 64-bit ints), then plain OpenBLAS
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


def _openblas() -> Any:
    with _lib_lock:
        if not _lib:
            import numpy  # noqa: F401 -- loads its BLAS, so it shows in the memory map

            _lib.append(_find_openblas())
        return _lib[0]


def _find_openblas() -> Any:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:  # not Linux: no map to read
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and put is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                put.restype, put.argtypes = None, [ctypes.c_int]
                return get, put
    return None


def blas_threads() -> int | None:
    """OpenBLAS's current thread count, or None when numpy uses another BLAS."""
    lib = _openblas()
    return None if lib is None else int(lib[0]())


def set_blas_threads(n: int) -> int | None:
    """Set OpenBLAS's thread count (process-wide); returns the previous count, None if not OpenBLAS."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"BLAS threads must be a positive int, got {n!r}")
    lib = _openblas()
    if lib is None:
        return None
    old = int(lib[0]())
    lib[1](n)
    return old


class CoreShare:
    """Give a spoken reply's stages their threads, and the old counts back on `restore()` (idempotent):
    the thinker's and the talker's llama.cpp contexts (one-token decodes; the thinker's prefills keep their
    count) and OpenBLAS (token2wav)."""

    def __init__(self, threads: StageThreads, thinker_ctx: Any, talker_ctx: Any) -> None:
        self._ctxs = [(thinker_ctx, thinker_ctx.threads), (talker_ctx, talker_ctx.threads)]
        self._done = False
        thinker_ctx.set_threads(threads.thinker, self._ctxs[0][1][1])
        talker_ctx.set_threads(threads.talker)
        self._blas = set_blas_threads(threads.token2wav)

    def restore(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            for ctx, old in self._ctxs:
                if not ctx.closed:
                    ctx.set_threads(*old)
        finally:
            if self._blas is not None:
                set_blas_threads(self._blas)
