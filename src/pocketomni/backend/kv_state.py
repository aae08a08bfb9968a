"""Per-sequence position bookkeeping and the saved-state format of a KV sequence.

llama.cpp only tracks the t position of each KV cell; M-RoPE needs "1 + the largest t/h/w so far"
for the next token, so each sequence keeps a small log of (t, max(t, h, w)) per cell.

Saved state = b"POKVSEQ1" | u32 header length | JSON header (model fingerprint, file identity, cell count)
| int32 t[n] | int32 maxpos[n] | u64 length | llama_state_seq_get_data bytes.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.errors import ModelFileError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so stale temporaries are left alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("pocketomni")
MAGIC = b"POKVSEQ1"


class SeqLog:
    """(t, max position) of every KV cell of one sequence, in decode order."""

    def __init__(self, t: np.ndarray | None = None, top: np.ndarray | None = None) -> None:
        self._t = np.zeros(0, np.int32) if t is None else np.asarray(t, np.int32)
        self._top = np.zeros(0, np.int32) if top is None else np.asarray(top, np.int32)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._next = int(self._top.max()) + 1 if self._top.size else 0

    def _flush(self) -> None:
        if self._pending:
            self._t = np.concatenate([self._t] + [a for a, _ in self._pending])
            self._top = np.concatenate([self._top] + [b for _, b in self._pending])
            self._pending.clear()

    def append(self, t: np.ndarray, top: np.ndarray) -> None:
        """Record decoded cells: their t positions and their max(t, h, w)."""
        top = np.array(top, np.int32)
        self._pending.append((np.array(t, np.int32), top))
        if top.size:
            self._next = max(self._next, int(top.max()) + 1)
        if len(self._pending) > 256:
            self._flush()

    def remove(self, p0: int, p1: int | None) -> None:
        """Forget cells with p0 <= t < p1 (p1=None: no upper bound), as llama_memory_seq_rm does."""
        self._flush()
        hit = self._t >= p0 if p1 is None else (self._t >= p0) & (self._t < p1)
        self._t, self._top = self._t[~hit], self._top[~hit]
        self._next = int(self._top.max()) + 1 if self._top.size else 0

    def copy(self) -> SeqLog:
        self._flush()
        return SeqLog(self._t.copy(), self._top.copy())

    @property
    def n_cells(self) -> int:
        self._flush()
        return int(self._t.size)

    @property
    def next_pos(self) -> int:
        return self._next

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        return self._t, self._top


def _fingerprint(model: Any) -> dict[str, Any]:
    return {
        "arch": model.arch, "n_embd": model.n_embd, "n_layer": model.n_layer,
        "n_vocab": model.n_vocab, "n_pos_per_embd": model.n_pos_per_embd,
    }


def pack_state(model: Any, log: SeqLog, raw: bytes, kv_type: str | None = None) -> bytes:
    """Serialise a sequence: fingerprint + position log + llama.cpp's sequence bytes."""
    t, top = log.arrays()
    header = dict(_fingerprint(model), format=1, n_cells=int(t.size), model_file=Path(model.path).name,
                  identity=model.identity, kv_type=kv_type)
    hj = json.dumps(header, sort_keys=True).encode()
    return b"".join([
        MAGIC, struct.pack("<I", len(hj)), hj,
        t.astype("<i4").tobytes(), top.astype("<i4").tobytes(),
        struct.pack("<Q", len(raw)), raw,
    ])


def unpack_state(model: Any, data: bytes, kv_type: str | None = None) -> tuple[SeqLog, bytes]:
    """Parse and check a blob from `pack_state`; ModelFileError if corrupt or from another model."""
    bad = "The saved chat state is corrupt or truncated; it cannot be restored."
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("state must be bytes")
    data = bytes(data)
    if data[:8] != MAGIC or len(data) < 12:
        raise ModelFileError("This is not a PocketOmni chat state (bad magic).")
    (hlen,) = struct.unpack_from("<I", data, 8)
    off = 12 + hlen
    if off > len(data):
        raise ModelFileError(bad)
    try:
        header = json.loads(data[12:off])
    except ValueError as e:
        raise ModelFileError(bad) from e
    if not isinstance(header, dict) or header.get("format") != 1:
        raise ModelFileError("The saved chat state has an unknown format version.")
    want = _fingerprint(model)
    got = {k: header.get(k) for k in want}
    if got != want:
        raise ModelFileError(
            f"The saved chat state belongs to a different model ({header.get('model_file')}: {got}); "
            f"load it with that model (this one is {want})."
        )
    saved_with = header.get("identity")  # absent in states saved before identities were recorded
    if saved_with is not None and saved_with != model.identity:
        raise ModelFileError(
            f"The saved chat state was made with another model file ({header.get('model_file')}, id {saved_with}); "
            f"the loaded one is {Path(model.path).name} (id {model.identity}). Its cache only fits the weights it "
            "was computed with: restore it on the model it was saved with."
        )
    saved_kv = header.get("kv_type")
    if kv_type is not None and saved_kv is not None and saved_kv != kv_type:
        raise ModelFileError(
            f"The saved chat state holds a {saved_kv} KV cache but this context's is {kv_type}; load the model with "
            f"kv_f32={saved_kv == 'f32'} to restore it."
        )
    n = header.get("n_cells")
    if not isinstance(n, int) or n < 0 or off + 8 * n + 8 > len(data):
        raise ModelFileError(bad)
    t = np.frombuffer(data, "<i4", n, off).astype(np.int32)
    top = np.frombuffer(data, "<i4", n, off + 4 * n).astype(np.int32)
    off += 8 * n
    (rlen,) = struct.unpack_from("<Q", data, off)
    off += 8
    if off + rlen != len(data):
        raise ModelFileError(bad)
    return SeqLog(t, top), data[off:]


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half of it.

    The content goes to `NAME.<random>.tmp` beside the file (locked while it is written), then
    replaces it. A symlink is written through (it stays a link); an existing file keeps its mode.
    Temporaries of `NAME` that no writer holds (left by a killed save) are removed first.
    """
    p = Path(path)
    if p.is_symlink():
        p = p.resolve()
    mode = p.stat().st_mode & 0o7777 if p.is_file() else None
    _remove_stale_temps(p)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=str(p.parent or "."))
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # live: _remove_stale_temps of another save leaves it alone
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, p)  # before close: the lock covers the whole life of the temporary
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _remove_stale_temps(p: Path) -> None:
    """Delete `p.name.<random>.tmp` files nobody holds a lock on (a save killed mid-write left them)."""
    if fcntl is None or not p.parent.is_dir():
        return
    removed = []
    for t in p.parent.glob(glob.escape(p.name) + ".*.tmp"):
        try:
            fd = os.open(t, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            t.unlink()
            removed.append(t.name)
        except OSError:  # locked: another save is writing it right now
            pass
        finally:
            os.close(fd)
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted save in %s: %s",
                    len(removed), p.parent, ", ".join(sorted(removed)))


# ---------------------------------------------------------------------- cell positions in llama.cpp's bytes
#
# llama_state_seq_get_data(seq) = u32 magic | i32 seq_id | u32 n_stream | per stream: u32 n_cells, then per
# cell: i32 pos | u32 n_seq_id | (M-RoPE models: i32 x | i32 y | i32 tok) | i32 seq_id * n_seq_id, then the
# K/V tensors. Saving one sequence writes exactly one seq id per cell, so the meta has a fixed stride.

_SEQ_HEADER = 12  # magic, seq_id, n_stream


def _cell_table(buf: Any, has_ext: bool) -> np.ndarray:
    """(n_cells, stride / 4) int32 view of the cell table of one sequence's state bytes (no copy)."""
    from pocketomni.errors import PocketOmniError

    mv = memoryview(buf).cast("B")
    if len(mv) < _SEQ_HEADER + 4:
        return np.zeros((0, 6 if has_ext else 3), "<i4")
    n_stream, n_cells = struct.unpack_from("<I", mv, 8)[0], struct.unpack_from("<I", mv, _SEQ_HEADER)[0]
    if n_stream != 1:
        raise PocketOmniError(f"KV position rewrite needs a unified KV cache (1 stream), this state has {n_stream}")
    width = 6 if has_ext else 3  # pos, n_seq_id, [x, y, tok], seq_id
    if _SEQ_HEADER + 4 + 4 * width * n_cells > len(mv):
        raise PocketOmniError("KV state is shorter than its cell table")
    table = np.frombuffer(mv, dtype="<i4", count=width * n_cells, offset=_SEQ_HEADER + 4).reshape(n_cells, width)
    if n_cells and np.any(table[:, 1] != 1):
        raise PocketOmniError("KV position rewrite expects one sequence id per saved cell")
    return table


def clamp_cell_positions(buf: Any, t_max: int, has_ext: bool) -> np.ndarray:
    """Lower, in place, the t position of every cell above t_max to t_max in one sequence's state bytes
    (a writable buffer: bytearray, ctypes array). Only positions change: the 2-D ext (h, w), token and
    K/V data stay. Returns the original t of every cell (to undo with `set_cell_t`)."""
    table = _cell_table(buf, has_ext)
    old = table[:, 0].copy()
    np.minimum(table[:, 0], int(t_max), out=table[:, 0])
    return old


def set_cell_t(buf: Any, t: np.ndarray, has_ext: bool) -> None:
    """Write the t position of every cell (e.g. the originals `clamp_cell_positions` returned)."""
    _cell_table(buf, has_ext)[:, 0] = t


def cell_positions(buf: Any, has_ext: bool) -> np.ndarray:
    """(n_cells, 3) int32 stored (t, h, w) of the cells in one sequence's state bytes (h = w = t without ext)."""
    table = _cell_table(buf, has_ext)
    if has_ext:
        return np.stack([table[:, 0], table[:, 3], table[:, 2]], axis=1).astype(np.int32)  # ext = x (w), y (h), tok
    return np.repeat(table[:, :1], 3, axis=1).astype(np.int32)
