"""OpenBLAS's idle spin, shortened before numpy loads it.

After each multi-threaded call OpenBLAS's worker threads busy-wait 2^28 cycles (~0.1 s) for the next
one. In a spoken reply run one after another, token2wav's numpy matmuls and llama.cpp's decodes
alternate every few milliseconds, so those spinning workers hold the cores llama.cpp's threads need:
synthetic 3B, 2 cores, the thinker's decode step took 105-114 ms instead of 49-55 ms and the first
audio came 6.2 s after the prompt instead of 4.0 s (benchmarks/results/blas_spin.md). 2^20 cycles
(~0.4 ms) still covers the gaps between the back-to-back matmuls of one DiT block (token2wav's render
time did not change) and lets the workers sleep soon after.

OpenBLAS reads OPENBLAS_THREAD_TIMEOUT (the exponent) once, when the library loads, and has no call to
change it later. So pocketomni sets it at import when numpy is not loaded yet and the variable is unset
(a value the user set is kept). `state()` says what happened; `pocketomni doctor` reports it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["DEFAULT_EXPONENT", "SPIN_EXPONENT", "VARIABLE", "exponent", "state"]

VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
SPIN_EXPONENT = 20  # OpenBLAS accepts 4..30
DEFAULT_EXPONENT = 28  # OpenBLAS's own

_numpy_was_loaded = "numpy" in sys.modules
_user_value = os.environ.get(VARIABLE)
if not _numpy_was_loaded and _user_value is None:
    os.environ[VARIABLE] = str(SPIN_EXPONENT)


def exponent() -> int:
    """The idle spin (log2 of cycles) this process's OpenBLAS got."""
    if _user_value is not None:
        try:
            return min(max(int(_user_value), 4), 30)  # OpenBLAS clamps the same way
        except ValueError:
            return DEFAULT_EXPONENT
    return DEFAULT_EXPONENT if _numpy_was_loaded else SPIN_EXPONENT


def state() -> str:
    """One line: the idle spin this process's OpenBLAS got, and how to change it if pocketomni could not."""
    if _user_value is not None:
        return f"{VARIABLE}={_user_value} (set by you)"
    if _numpy_was_loaded:
        return (f"OpenBLAS default (2^28 cycles): numpy was imported before pocketomni; import pocketomni "
                f"first or set {VARIABLE}={SPIN_EXPONENT} (spoken replies run one after another ~1.5x "
                "slower otherwise)")
    return f"{VARIABLE}={SPIN_EXPONENT} (set by pocketomni before numpy loaded)"
