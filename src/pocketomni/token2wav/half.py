"""float16-stored weights, float32 compute: the conversion and the per-thread buffer it writes into.

token2wav keeps its big matrices as float16 (views of the GGUF's memory map) and converts one at a
time to float32 right before a product (`dense`). numpy's float16 -> float32 cast is scalar (~1.5 ns
per value here); ggml's row conversion (libggml-cpu, F16C / NEON) is ~10x faster, so it is used when
llama-cpp-python's library folder has it and it passes a bit-exact self-check, numpy otherwise. Both
give exactly the same float32 values (float16 -> float32 is exact).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

F32, F16 = np.float32, np.float16
_Convert = Callable[[np.ndarray, np.ndarray], None]  # (float16 source, float32 destination), same size


def _numpy_convert(src: np.ndarray, dst: np.ndarray) -> None:
    np.copyto(dst, src.reshape(dst.shape), casting="safe")


def _ggml_folder() -> Path | None:
    env = os.environ.get("LLAMA_CPP_LIB_PATH")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llama_cpp")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _self_check(convert: _Convert) -> bool:
    """Bit-exact on every non-NaN float16 value (signed zeros, subnormals, infinities and the tail past
    the SIMD width included); NaNs stay NaNs (their payload bits may differ)."""
    src = np.arange(1 << 16, dtype=np.uint16).view(F16)[:-3]
    with np.errstate(invalid="ignore"):  # ARM flags the signalling-NaN patterns' cast as invalid
        got, want = np.empty(src.size, F32), src.astype(F32)
    convert(src, got)
    nan = np.isnan(want)
    same = np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    return bool(same and np.isnan(got[nan]).all())


@functools.cache
def _converter() -> _Convert:
    folder = _ggml_folder()
    name = {"darwin": "libggml-cpu.dylib", "win32": "ggml-cpu.dll"}.get(sys.platform, "libggml-cpu.so")
    if folder is None or not (folder / name).is_file():
        return _numpy_convert
    try:
        lib = ctypes.CDLL(str(folder / name))
        fn = lib.ggml_cpu_fp16_to_fp32
        if hasattr(lib, "ggml_cpu_init"):  # fills the lookup tables a non-SIMD build reads
            lib.ggml_cpu_init.argtypes, lib.ggml_cpu_init.restype = [], None
            lib.ggml_cpu_init()
    except (OSError, AttributeError):
        return _numpy_convert
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None

    def convert(src: np.ndarray, dst: np.ndarray) -> None:
        s = np.ascontiguousarray(src)
        fn(s.ctypes.data, dst.ctypes.data, s.size)  # ctypes releases the GIL during the call

    return convert if _self_check(convert) else _numpy_convert


def converter_name() -> str:
    """"ggml" or "numpy": which float16 -> float32 conversion this process uses (for reports)."""
    return "numpy" if _converter() is _numpy_convert else "ggml"


def to_f32(a: np.ndarray) -> np.ndarray:
    """A float32 array: `a` itself if it is one, else a new converted copy."""
    if a.dtype == F32:
        return a
    if a.dtype != F16:
        return np.asarray(a, F32)
    out = np.empty(a.shape, F32)
    _converter()(a, out)
    return out


_local = threading.local()
SCRATCH_MAX = 1 << 23  # values (32 MB as float32; full-size BigVGAN stage-0 kernels are 6.5M): larger
# matrices (the first upsampler, 13M) get a temporary, not a kept buffer


def dense(w: np.ndarray) -> np.ndarray:
    """float32 weights for one product: `w` itself if float32; a float16 `w` converted into this
    thread's scratch buffer, valid until this thread's next `dense` call (use it, then drop it).
    The buffer grows to the largest matrix converted up to SCRATCH_MAX values (bigger ones, used
    rarely or once per long product, get a temporary copy), so at most one matrix is held in float32."""
    if w.dtype != F16 or w.size > SCRATCH_MAX:
        return to_f32(w)
    buf: np.ndarray | None = getattr(_local, "buf", None)
    if buf is None or buf.size < w.size:
        buf = _local.buf = np.empty(w.size, F32)
    out = buf[: w.size].reshape(w.shape)
    _converter()(w, out)
    return out
