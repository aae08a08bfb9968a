"""Quantization of llama.cpp model GGUFs (thinker, later talker) through llama.cpp's own quantizer.

The converter first writes a lossless intermediate (matrices in their stored 16-bit type, vectors in
f32) and hands it to `llama_model_quantize`, which picks per-tensor types exactly as the `llama-quantize`
tool does. The mmproj's q8_0 is done in numpy by the writer (`gguf.quants`), since clip.cpp files are
not llama models.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf

from pocketomni.errors import ConversionError

# The target types `pocketomni convert --quant` offers through llama.cpp (llama_ftype values, llama.h).
# q4_0 is the one llama.cpp repacks on x86 at any width (q4_k_m falls back to q5_0 where a row is not
# a multiple of 256, e.g. the 3B talker's 896). The mixes (q4_0, q4_k_m, q5_k_m) keep the output head
# in a wider type (q6_K, or q8_0 where rows are not multiples of 256); a `_pure` type stores every
# matrix, head and input table included, in the one type (llama.cpp's `--pure`).
LLAMA_QUANT_TYPES = {
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q5_k_m": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_0_pure": gguf.LlamaFileType.MOSTLY_Q4_0,
}
PURE_SUFFIX = "_pure"
# Keep llama.cpp's working buffers small: slabs of at most this many bytes of rows.
MAX_BUF_BYTES = 256 << 20


def llama_quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """Quantize the GGUF `src` into `dst` as `quant` (a key of LLAMA_QUANT_TYPES) with llama.cpp."""
    if quant not in LLAMA_QUANT_TYPES:
        raise ConversionError(f"unknown quantization {quant!r}; choose one of {', '.join(LLAMA_QUANT_TYPES)}.")
    try:
        import llama_cpp
    except ImportError as e:
        raise ConversionError(
            "quantizing needs llama-cpp-python (pip install llama-cpp-python==0.3.36), or convert with "
            "--quant f16 / f32."
        ) from e
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(LLAMA_QUANT_TYPES[quant])
    params.pure = quant.endswith(PURE_SUFFIX)
    params.nthread = threads if threads and threads > 0 else (os.cpu_count() or 1)
    if hasattr(params, "max_buf_size"):
        params.max_buf_size = MAX_BUF_BYTES
    with _captured_stderr() as log_path:
        rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
        tail = _tail(log_path)
    if rc != 0 or not dst.is_file():
        raise ConversionError(
            f"llama.cpp failed to quantize {src.name} to {quant} (code {rc}). Check free disk space, or "
            f"convert with --quant f16. llama.cpp said:\n{tail}"
        )


@contextmanager
def _captured_stderr() -> Iterator[Path]:
    """Send the C library's stderr (llama.cpp logs one line per tensor) to a temp file for the block."""
    with tempfile.TemporaryDirectory(prefix="pocketomni-quant-") as d:
        path = Path(d) / "llama.log"
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(path, "wb") as f:
                os.dup2(f.fileno(), 2)
                try:
                    yield path
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])
