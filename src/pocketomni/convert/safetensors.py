"""A memory-mapped safetensors reader without torch.

The file format is an 8-byte little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets"}`` and the raw little-endian data. We parse the header ourselves,
map the file read-only and hand out tensors in row blocks, converting bf16 to float32 by shifting the
16 stored bits into the high half of a uint32. Pages already consumed are released with
``madvise(MADV_DONTNEED)`` so a multi-gigabyte tensor never has to be resident at once.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pocketomni.errors import ConversionError
from pocketomni.mapped_pages import drop_pages

if TYPE_CHECKING:
    from typing_extensions import Self

# Stored dtype -> (numpy dtype of the raw storage, bytes per element).
_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "BF16": (np.dtype("<u2"), 2),
    "F16": (np.dtype("<f2"), 2),
    "F32": (np.dtype("<f4"), 4),
}

# Rows per block when streaming a tensor: about 32 MiB of float32 output per block.
BLOCK_BYTES = 32 << 20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and byte range (relative to the file start)."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse a safetensors header and check every byte range lies inside the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in a {size}-byte file")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise ConversionError(
            f"{path} is not a readable safetensors file ({e}). Re-download this shard."
        ) from e
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = meta.get("dtype")
        if dtype not in _DTYPES:
            raise ConversionError(
                f"{path.name}: tensor {name} has dtype {dtype}; only BF16, F16 and F32 checkpoints are "
                "supported. Use the original Hugging Face release of Qwen2.5-Omni."
            )
        shape = tuple(int(d) for d in meta["shape"])
        lo, hi = (int(x) for x in meta["data_offsets"])
        info = TensorInfo(name, path, dtype, shape, base + lo, base + hi)
        if info.nbytes != info.n_elements * _DTYPES[dtype][1] or info.end > size:
            raise ConversionError(
                f"{path.name}: tensor {name} has an inconsistent byte range (the shard looks truncated). "
                "Re-download this shard."
            )
        infos[name] = info
    return infos


class MappedFiles:
    """Read-only memory maps of safetensors shards, opened on first use and closed together."""

    def __init__(self) -> None:
        self._maps: dict[Path, tuple[int, mmap.mmap]] = {}

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            fd = os.open(path, os.O_RDONLY)
            try:
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except Exception:
                os.close(fd)
                raise
            self._maps[path] = (fd, mm)
        return self._maps[path][1]

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The stored elements as a flat read-only array backed by the map (no copy)."""
        storage, _ = _DTYPES[info.dtype]
        return np.frombuffer(self._map(info.path), dtype=storage, count=info.n_elements, offset=info.start)

    def release(self, info: TensorInfo, lo: int, hi: int) -> None:
        """Drop the mapped pages of bytes [lo, hi) of a tensor from this process (best effort)."""
        mm = self._map(info.path)
        page = mmap.PAGESIZE
        a = ((info.start + lo) // page) * page
        drop_pages(mm, a, info.start + hi - a)

    def close(self) -> None:
        for fd, mm in self._maps.values():
            try:
                mm.close()
            except BufferError:  # an array view is still alive; the map closes when it dies
                pass
            os.close(fd)
        self._maps.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Convert stored elements to a new float32 array (bf16 by bit shifting, no torch)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def iter_rows_f32(
    files: MappedFiles, info: TensorInfo, block_bytes: int = BLOCK_BYTES
) -> Iterator[np.ndarray]:
    """Yield the tensor as float32 blocks of whole rows (shape (rows, *shape[1:])), releasing pages behind."""
    shape = info.shape if info.shape else (1,)
    row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if len(shape) == 1:
        # 1-D tensors are small (norms, biases): one block.
        yield to_f32(files.raw(info), info.dtype).reshape(shape)
        files.release(info, 0, info.nbytes)
        return
    rows_per_block = max(1, block_bytes // max(1, row * 4))
    flat = files.raw(info)
    esize = _DTYPES[info.dtype][1]
    for r0 in range(0, shape[0], rows_per_block):
        r1 = min(shape[0], r0 + rows_per_block)
        block = to_f32(flat[r0 * row : r1 * row], info.dtype).reshape((r1 - r0, *shape[1:]))
        yield block
        files.release(info, r0 * row * esize, r1 * row * esize)


def read_f32(files: MappedFiles, info: TensorInfo) -> np.ndarray:
    """The whole tensor as float32 (for small tensors that must be reshaped or sliced)."""
    out = to_f32(files.raw(info), info.dtype).reshape(info.shape)
    files.release(info, 0, info.nbytes)
    return out
