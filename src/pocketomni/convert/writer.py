"""Streaming GGUF writing: tensor infos first, then each tensor's data block by block.

`gguf.GGUFWriter.add_tensor` keeps every tensor in memory until the end, so instead we declare all
tensors up front with `add_tensor_info` (shapes and types are known from the safetensors headers),
write header, key/values and tensor infos, then stream every tensor's data in declaration order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType

# A source yields the tensor as float32 blocks of whole rows, in order, in the GGUF layout.
BlockSource = Callable[[], Iterator[np.ndarray]]

FLOAT_TYPES = {QT.F32: np.float32, QT.F16: np.float16}


@dataclass
class TensorSpec:
    """One output tensor: GGUF name, shape (numpy order, outermost first), stored type and data source."""

    name: str
    shape: tuple[int, ...]
    qtype: QT
    source: BlockSource

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.qtype)


@dataclass
class GGUFPlan:
    """Everything needed to write one GGUF file."""

    arch: str
    kv: Callable[[gguf.GGUFWriter], None]
    tensors: list[TensorSpec] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def tensor_nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    """Bytes of a tensor of `shape` stored as `qtype`."""
    if qtype in FLOAT_TYPES:
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(FLOAT_TYPES[qtype]).itemsize
    if qtype == QT.BF16:
        return int(np.prod(shape, dtype=np.int64)) * 2
    return int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype), dtype=np.int64))


def can_store(shape: tuple[int, ...], qtype: QT) -> bool:
    """Whether rows of this shape fit whole blocks of `qtype` (float types always do)."""
    if qtype in FLOAT_TYPES or qtype == QT.BF16:
        return True
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return len(shape) >= 2 and shape[-1] % block == 0


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even; exact for values that came from bf16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def encode(block: np.ndarray, qtype: QT) -> np.ndarray:
    """A float32 block in the stored representation of `qtype`."""
    if qtype in FLOAT_TYPES:
        return np.ascontiguousarray(block, dtype=FLOAT_TYPES[qtype])
    if qtype == QT.BF16:
        return f32_to_bf16_bits(block)
    return gguf.quants.quantize(np.ascontiguousarray(block, dtype=np.float32), qtype)


class FastGGUFWriter(gguf.GGUFWriter):
    """GGUFWriter that packs long string/int arrays (tokens, merges, token types) in one pass.

    The stock packer handles each element separately (seconds for a 150k-token vocabulary); the
    bytes written are identical (checked in tests/test_convert_units.py).
    """

    def _pack_val(
        self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None
    ) -> bytes:
        if (
            vtype == GGUFValueType.ARRAY and sub_type is None and isinstance(val, list) and len(val) > 64
            and self.endianess == gguf.GGUFEndian.LITTLE
        ):
            head = struct.pack("<I", vtype) if add_vtype else b""
            if all(type(v) is str for v in val):
                enc = [v.encode("utf-8") for v in val]
                body = b"".join(struct.pack("<Q", len(e)) + e for e in enc)
                return head + struct.pack("<IQ", GGUFValueType.STRING, len(val)) + body
            if all(type(v) is int for v in val) and -(2**31) <= min(val) and max(val) < 2**31:
                body = np.asarray(val, "<i4").tobytes()
                return head + struct.pack("<IQ", GGUFValueType.INT32, len(val)) + body
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _declare(w: gguf.GGUFWriter, t: TensorSpec) -> None:
    if t.qtype in FLOAT_TYPES:
        w.add_tensor_info(t.name, t.shape, np.dtype(FLOAT_TYPES[t.qtype]), t.nbytes)
    elif t.qtype == QT.BF16:
        w.add_tensor_info(t.name, t.shape, np.dtype(np.uint16), t.nbytes, raw_dtype=QT.BF16)
    else:
        byte_shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
        w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.qtype)


def write_gguf(path: Path, plan: GGUFPlan, progress: Any = None) -> None:
    """Write `plan` to `path`, streaming tensor data; `progress` is a tqdm-like bar updated in bytes."""
    w = FastGGUFWriter(path, plan.arch)
    try:
        plan.kv(w)
        for t in plan.tensors:
            _declare(w, t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None and len(w.fout) == 1
        fout = w.fout[0]
        w.write_padding(fout, fout.tell())
        for t in plan.tensors:
            written = 0
            for block in t.source():
                data = encode(block, t.qtype)
                data.tofile(fout)
                written += data.nbytes
                if progress is not None:
                    progress.update(data.nbytes)
            if written != t.nbytes:
                raise RuntimeError(f"internal error: {t.name} produced {written} bytes, expected {t.nbytes}")
            w.write_padding(fout, written)
        fout.flush()
    finally:
        w.close()


def one_block(fn: Callable[[], np.ndarray]) -> BlockSource:
    """A source for a small tensor computed in one piece."""

    def gen() -> Iterator[np.ndarray]:
        yield fn()

    return gen


def add_meta_strings(w: gguf.GGUFWriter, meta: dict[str, str]) -> None:
    """Provenance strings (`pocketomni.*`) other than the name."""
    for k, v in meta.items():
        if k != "name":
            w.add_string(f"pocketomni.{k}", v)
