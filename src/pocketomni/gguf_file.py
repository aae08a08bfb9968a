"""A fast, defensive GGUF header reader, run before a file reaches llama.cpp.

llama.cpp aborts the whole process on some malformed files, so every model file is first checked
here: magic, version, every key/value and tensor record, and that each tensor's bytes lie inside
the file. Large arrays (the 151k-entry vocabulary and merges) are skipped over, not materialized,
which keeps this fast (`gguf.GGUFReader` takes ~20 s on a Qwen vocabulary). The type tables and
dequantization come from the `gguf` package.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from pocketomni.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_INLINE_ARRAY = 64  # arrays longer than this are reported as LongArray, not loaded

_SCALARS: dict[int, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class LongArray:
    """Placeholder for a metadata array too long to load eagerly (e.g. the vocabulary)."""

    item_type: GGUFValueType
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class TensorInfo:
    """One tensor record. `shape` is numpy order (rows first), the reverse of ggml's ne[]."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def row_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        return self.shape[-1] // block * size


class _Cursor:
    """Bounds-checked little-endian reads over a buffer; running past the end raises ModelFileError."""

    def __init__(self, buf: Any, size: int, path: Path) -> None:
        self.buf, self.size, self.pos, self.path = buf, size, 0, path

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFileError(
                f"{self.path} is truncated or corrupt (header runs past the end of the file at byte "
                f"{self.pos}). Re-download or re-convert the model file."
            )

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self) -> str:
        n = self.unpack("<Q")
        self.need(n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelFileError(f"{self.path}: invalid UTF-8 in a GGUF string at byte {self.pos - n}") from e


def _value_type(raw: int, path: Path) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError as e:
        raise ModelFileError(f"{path}: unknown GGUF value type {raw}; the file is corrupt") from e


_U64 = struct.Struct("<Q")


def _skip_strings(cur: _Cursor, n: int) -> None:
    # hot loop for 150k-entry vocabularies: bounds are checked once at the end
    pos, buf, unpack = cur.pos, cur.buf, _U64.unpack_from
    try:
        for _ in range(n):
            pos += 8 + unpack(buf, pos)[0]
    except (struct.error, OverflowError):  # past the end, or a length beyond any file
        pos = cur.size + 1
    cur.need(pos - cur.pos)
    cur.pos = pos


def _read_value(cur: _Cursor, vtype: GGUFValueType) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.string()
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype])
    if vtype == GGUFValueType.ARRAY:
        itype = _value_type(cur.unpack("<I"), cur.path)
        n = cur.unpack("<Q")
        if itype == GGUFValueType.ARRAY:
            raise ModelFileError(f"{cur.path}: nested GGUF arrays are not supported")
        if n <= MAX_INLINE_ARRAY:
            return [_read_value(cur, itype) for _ in range(n)]
        if itype == GGUFValueType.STRING:
            _skip_strings(cur, n)
        else:
            size = struct.calcsize(_SCALARS[itype]) * n
            cur.need(size)
            cur.pos += size
        return LongArray(itype, n)
    raise ModelFileError(f"{cur.path}: unhandled GGUF value type {vtype}")


class GGUFFile:
    """Parsed GGUF header: metadata, tensor table, and a row reader for embedding tables."""

    def __init__(self, path: Path, version: int, metadata: dict[str, Any],
                 tensors: OrderedDict[str, TensorInfo], size: int) -> None:
        self.path, self.version, self.metadata, self.tensors, self.size = path, version, metadata, tensors, size

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GGUFFile:
        """Validate and parse the header of `path`; raise ModelFileError with a fix on any problem."""
        p = Path(path)
        if not p.exists():
            raise ModelFileError(f"Model file not found: {p}. Check the path or run `pocketomni convert`.")
        if not p.is_file():
            raise ModelFileError(f"{p} is not a file; pass the path of a .gguf file.")
        size = p.stat().st_size
        if size < 24:
            raise ModelFileError(f"{p} is too small ({size} bytes) to be a GGUF model; it is truncated or empty.")
        try:
            with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if mm[:4] != GGUF_MAGIC:
                    raise ModelFileError(
                        f"{p} is not a GGUF file (magic {bytes(mm[:4])!r}, expected b'GGUF'). "
                        "Convert the Hugging Face checkpoint with `pocketomni convert`."
                    )
                return cls._parse(p, mm, size)
        except OSError as e:
            fix = ("give this user read access to it (chmod a+r)" if isinstance(e, PermissionError)
                   else "check that the file is intact and still there")
            raise ModelFileError(f"cannot read the model file {p}: {e.strerror or e}; {fix}.") from e

    @classmethod
    def _parse(cls, p: Path, mm: mmap.mmap, size: int) -> GGUFFile:
        cur = _Cursor(mm, size, p)
        cur.pos = 4
        version = cur.unpack("<I")
        if version not in SUPPORTED_VERSIONS:
            raise ModelFileError(f"{p}: GGUF version {version} is not supported (expected 2 or 3).")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ModelFileError(f"{p}: implausible GGUF counts ({n_tensors} tensors, {n_kv} keys); file is corrupt.")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            if key in meta:
                raise ModelFileError(f"{p}: duplicate metadata key {key!r}; file is corrupt.")
            meta[key] = _read_value(cur, _value_type(cur.unpack("<I"), p))
        raw: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            if not 1 <= n_dims <= 4:
                raise ModelFileError(f"{p}: tensor {name!r} has {n_dims} dimensions; file is corrupt.")
            ne = [cur.unpack("<Q") for _ in range(n_dims)]
            try:
                gtype = GGMLQuantizationType(cur.unpack("<I"))
            except ValueError as e:
                raise ModelFileError(
                    f"{p}: tensor {name!r} has an unknown data type; the file is corrupt or needs a newer runtime."
                ) from e
            raw.append((name, tuple(reversed(ne)), gtype, cur.unpack("<Q")))
        align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ModelFileError(f"{p}: invalid general.alignment {align!r}.")
        data_start = (cur.pos + align - 1) // align * align
        tensors: OrderedDict[str, TensorInfo] = OrderedDict()
        for name, shape, gtype, rel in raw:
            if name in tensors:
                raise ModelFileError(f"{p}: duplicate tensor {name!r}; file is corrupt.")
            if gtype not in GGML_QUANT_SIZES or any(d <= 0 for d in shape):
                raise ModelFileError(f"{p}: tensor {name!r} has invalid type or shape {shape}.")
            block, tsize = GGML_QUANT_SIZES[gtype]
            if shape[-1] % block:
                raise ModelFileError(f"{p}: tensor {name!r} row length {shape[-1]} is not a multiple of {block}.")
            n_bytes = int(np.prod(shape, dtype=np.int64)) // block * tsize
            start = data_start + rel
            if rel % align or start + n_bytes > size:
                raise ModelFileError(
                    f"{p} is truncated or corrupt: tensor {name!r} lies outside the file "
                    f"(needs bytes {start}..{start + n_bytes}, file has {size}). Re-download or re-convert it."
                )
            tensors[name] = TensorInfo(name, shape, gtype, start, n_bytes)
        return cls(p, version, meta, tensors, size)

    def identity(self, edge: int = 256) -> str:
        """A short id of this exact file: sha256 over its size, its header (metadata and tensor table)
        and the first and last `edge` bytes of every tensor, so files that share a header but hold other
        weights (another fine-tune, a re-conversion) differ. Reads a few KB per tensor, not the file."""
        h = hashlib.sha256(str(self.size).encode())
        start = min((t.offset for t in self.tensors.values()), default=self.size)
        try:
            with open(self.path, "rb") as f:
                h.update(os.pread(f.fileno(), start, 0))
                for t in self.tensors.values():
                    n = min(edge, t.n_bytes)
                    h.update(os.pread(f.fileno(), n, t.offset))
                    h.update(os.pread(f.fileno(), n, t.offset + t.n_bytes - n))
        except OSError as e:
            raise ModelFileError(f"cannot read {self.path} ({e.strerror}); check that the file is still there") from e
        return h.hexdigest()[:32]

    @property
    def arch(self) -> str:
        """Value of general.architecture ('' if missing)."""
        a = self.metadata.get("general.architecture", "")
        return a if isinstance(a, str) else ""

    def check_text_hparams(self) -> None:
        """Sanity-check the hyperparameters llama.cpp divides by or asserts on (it aborts
        the process on e.g. block_count 0 or M-RoPE sections wider than a head)."""
        a, m = self.arch, self.metadata

        def positive(key: str, required: bool = True, limit: int = 1 << 24) -> int | None:
            v = m.get(f"{a}.{key}")
            if v is None and not required:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit:
                raise ModelFileError(f"{self.path}: {a}.{key} = {v!r} is missing or out of range; the file is corrupt.")
            return v

        positive("block_count", limit=10_000)
        n_embd = positive("embedding_length")
        n_head = m.get(f"{a}.attention.head_count")
        if isinstance(n_head, list):  # per-layer head counts: only check they are sane
            if not n_head or any(not isinstance(h, int) or h < 0 for h in n_head):
                raise ModelFileError(f"{self.path}: invalid {a}.attention.head_count {n_head!r}")
            return
        n_head = positive("attention.head_count")
        n_kv = positive("attention.head_count_kv", required=False)
        if n_kv is not None and (n_kv > n_head or n_head % n_kv):  # type: ignore[operator]
            raise ModelFileError(f"{self.path}: head_count_kv {n_kv} does not divide head_count {n_head}.")
        head_dim = positive("attention.key_length", required=False)
        if head_dim is None:
            if n_embd % n_head:  # type: ignore[operator]
                raise ModelFileError(f"{self.path}: embedding_length {n_embd} is not a multiple of head_count {n_head}.")
            head_dim = n_embd // n_head  # type: ignore[operator]
        sect = m.get(f"{a}.rope.dimension_sections")
        if sect is not None and (
                not isinstance(sect, list) or not 1 <= len(sect) <= 4
                or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in sect)
                or sum(sect) > head_dim or not any(sect[:3])):
                raise ModelFileError(
                    f"{self.path}: rope.dimension_sections {sect!r} do not fit a head of {head_dim} dims; file is corrupt."
                )

    def tensor(self, name: str) -> TensorInfo:
        """Tensor record by name; ModelFileError if absent."""
        t = self.tensors.get(name)
        if t is None:
            raise ModelFileError(f"{self.path} has no tensor {name!r}; it is not the expected kind of model file.")
        return t

    def read_array(self, name: str) -> np.ndarray:
        """A tensor in numpy order: F32 and F16 as read-only views of the file (no copy, clean pages the
        OS can drop), other types dequantized to float32."""
        info = self.tensor(name)
        if info.ggml_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            dt = np.float32 if info.ggml_type == GGMLQuantizationType.F32 else np.float16
            return np.memmap(self.path, dtype=dt, mode="r", offset=info.offset, shape=info.shape)
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.n_bytes,))
        return np.asarray(dequantize(np.asarray(raw), info.ggml_type), dtype=np.float32).reshape(info.shape)


class EmbeddingRows:
    """Reads and dequantizes single rows of a 2-D tensor (the token embedding table), with an LRU cache."""

    def __init__(self, gguf_file: GGUFFile, name: str = "token_embd.weight", cache_rows: int = 4096) -> None:
        self.info = gguf_file.tensor(name)
        if len(self.info.shape) != 2:
            raise ModelFileError(f"{gguf_file.path}: {name} should be 2-D, has shape {self.info.shape}")
        self.n_rows, self.n_cols = self.info.shape
        self._path = gguf_file.path
        self._fd: int | None = os.open(gguf_file.path, os.O_RDONLY)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_rows = cache_rows
        self._lock = threading.Lock()

    def _read(self, i: int) -> np.ndarray:
        if self._fd is None:
            raise ModelFileError(f"embedding reader for {self._path} is closed")
        rb = self.info.row_bytes
        buf = os.pread(self._fd, rb, self.info.offset + i * rb)
        if len(buf) != rb:
            raise ModelFileError(f"{self._path}: short read of embedding row {i}; the file changed or is truncated.")
        raw = np.frombuffer(buf, dtype=np.uint8)
        t = self.info.ggml_type
        if t == GGMLQuantizationType.F32:
            row = raw.view(np.float32).copy()
        elif t == GGMLQuantizationType.F16:
            row = raw.view(np.float16).astype(np.float32)
        elif t == GGMLQuantizationType.BF16:
            row = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            row = np.asarray(dequantize(raw, t), dtype=np.float32).reshape(-1).copy()
        if row.shape != (self.n_cols,):
            raise ModelFileError(f"{self._path}: embedding row {i} decoded to {row.shape}, expected ({self.n_cols},)")
        row.setflags(write=False)
        return row

    def rows(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Float32 rows (len(ids), n_cols) for the given row indices."""
        idx = np.asarray(ids, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise ValueError(f"row index out of range [0, {self.n_rows})")
        out = np.empty((idx.size, self.n_cols), dtype=np.float32)
        with self._lock:
            for k, i in enumerate(idx.tolist()):
                row = self._cache.get(i)
                if row is None:
                    row = self._read(i)
                    self._cache[i] = row
                    if len(self._cache) > self._cache_rows:
                        self._cache.popitem(last=False)
                else:
                    self._cache.move_to_end(i)
                out[k] = row
        return out

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._cache.clear()
