"""Saving a chat to one file and restoring it: history, KV cache, options; written atomically.

File layout: b"POCHAT01" | u32 header length | JSON header | u64 length | .npz of the per-token
history (ids, kinds, positions[, hidden]) | u64 length | the KV sequence state (LlamaContext.get_state,
which carries its own model fingerprint).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.backend.kv_state import write_atomic
from pocketomni.errors import ModelFileError

MAGIC = b"POCHAT01"
FORMAT = 1


@dataclass(frozen=True)
class SavedChat:
    """What a chat file holds: the JSON header (history, options, settings), the per-token history
    arrays and the KV sequence state. Building a chat from it is the chat's job (Chat.restore)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    kv_state: bytes


def write_chat_file(path: Path, saved: SavedChat) -> None:
    """Write `saved` to `path` atomically."""
    buf = io.BytesIO()
    np.savez(buf, **saved.arrays)  # type: ignore[arg-type]
    arrays = buf.getvalue()
    hj = json.dumps({"format": FORMAT, **saved.header}).encode()
    write_atomic(path, b"".join([
        MAGIC, struct.pack("<I", len(hj)), hj, struct.pack("<Q", len(arrays)), arrays,
        struct.pack("<Q", len(saved.kv_state)), saved.kv_state,
    ]))


def read_chat_file(path: Path) -> SavedChat:
    """The contents of a chat file; ModelFileError if it is missing, not one, or corrupt."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"chat file not found: {path}; check the path") from None
    return SavedChat(*_parse(data, Path(path)))


def _parse(data: bytes, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes]:
    bad = ModelFileError(f"{path} is not a PocketOmni chat file or is corrupt; save the chat again with chat.save()")
    if data[:8] != MAGIC or len(data) < 12:
        raise bad
    try:
        (hlen,) = struct.unpack_from("<I", data, 8)
        off = 12 + hlen
        header = json.loads(data[12:off])
        (alen,) = struct.unpack_from("<Q", data, off)
        off += 8
        with np.load(io.BytesIO(data[off : off + alen]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        off += alen
        (klen,) = struct.unpack_from("<Q", data, off)
        off += 8
        kv = data[off : off + klen]
        if len(kv) != klen or off + klen != len(data):
            raise bad
    except (struct.error, ValueError, OSError, KeyError) as e:
        raise bad from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path} has an unknown chat file format version; it was written by another pocketomni")
    return header, arrays, kv
