"""Saving a chat to one file and restoring it: history, KV cache, options; written atomically.

The header also holds the chat's context policy and its messages, those a trim dropped included
(`dropped`); the embeddings of kept media are not saved, so after a restore a later trim turns them
into "[image]"-style text. File layout (format 2): b"POCHAT02" | u32 header length | JSON header | 32-byte sha256 of the header
| u64 length | .npz of the per-token history (ids, kinds, positions[, hidden]) | u64 length | the KV
sequence state (LlamaContext.get_state, which carries the thinker file's identity). The header holds
the sha256 of the two other sections ("checksums"), so damage anywhere is found before restoring.
Format 1 (b"POCHAT01", the same without the header digest and checksums) is still read.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.backend.kv_state import write_atomic
from pocketomni.chat.history_policy import HistoryPolicy
from pocketomni.errors import ModelFileError, OptionsError
from pocketomni.options import GenerationOptions, check_text

MAGIC = b"POCHAT02"
MAGIC_V1 = b"POCHAT01"
FORMAT = 2
SECTIONS = {"arrays": "token history", "kv_state": "KV cache"}
_ROLES = ("system", "user", "assistant")
_PART_TYPES = ("text", "image", "audio", "video")
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass(frozen=True)
class SavedChat:
    """What a chat file holds: the JSON header (history, options, settings), the per-token history
    arrays and the KV sequence state. Building a chat from it is the chat's job (Chat.restore)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    kv_state: bytes


def write_chat_file(path: Path, saved: SavedChat) -> None:
    """Write `saved` to `path` atomically; ModelFileError naming the path and the fix on OS errors."""
    buf = io.BytesIO()
    np.savez(buf, **saved.arrays)  # type: ignore[arg-type]
    arrays = buf.getvalue()
    sums = {"arrays": _sha(arrays), "kv_state": _sha(saved.kv_state)}
    hj = json.dumps({**saved.header, "format": FORMAT, "checksums": sums}).encode()
    data = b"".join([
        MAGIC, struct.pack("<I", len(hj)), hj, hashlib.sha256(hj).digest(), struct.pack("<Q", len(arrays)), arrays,
        struct.pack("<Q", len(saved.kv_state)), saved.kv_state,
    ])
    try:
        write_atomic(path, data)
    except OSError as e:
        raise ModelFileError(_os_message(e, Path(path), "write", len(data))) from e


def read_chat_file(path: Path) -> SavedChat:
    """The contents of a chat file; ModelFileError if it is missing, not one, damaged or malformed."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelFileError(_os_message(e, p, "read", 0)) from e
    header, arrays, kv = _parse(data, p)
    check_header(header, p)
    return SavedChat(header, arrays, kv)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _os_message(e: OSError, path: Path, verb: str, n_bytes: int) -> str:
    """What went wrong with a chat file on disk, and the fix."""
    if isinstance(e, FileNotFoundError):
        if verb == "read":
            return f"chat file not found: {path}; check the path"
        return f"cannot save the chat to {path}: the folder {path.parent} does not exist; create it or pick another"
    if isinstance(e, IsADirectoryError):
        return f"cannot {verb} the chat file {path}: it is a directory; pass the path of a file"
    if isinstance(e, PermissionError):
        return f"cannot {verb} the chat file {path}: permission denied; pick a file or folder you can {verb}"
    if e.errno in _NO_SPACE:
        return (f"cannot save the chat to {path}: no space for its {n_bytes} bytes ({e.strerror}); "
                "free disk space or save it elsewhere")
    return f"cannot {verb} the chat file {path}: {e.strerror or e}; check the path and the disk"


def _parse(data: bytes, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes]:
    bad = ModelFileError(f"{path} is not a PocketOmni chat file or is corrupt; save the chat again with chat.save()")
    magic = data[:8]
    if magic not in (MAGIC, MAGIC_V1) or len(data) < 12:
        raise bad
    sums: Any = None
    try:
        (hlen,) = struct.unpack_from("<I", data, 8)
        off = 12 + hlen
        raw_header = data[12:off]
        if magic == MAGIC:
            if data[off:off + 32] != hashlib.sha256(raw_header).digest():
                raise _damaged(path, "header")
            off += 32
        header = json.loads(raw_header)
        if not isinstance(header, dict):
            raise bad
        if magic == MAGIC:
            sums = header.get("checksums")
            if not isinstance(sums, dict):
                raise bad
        (alen,) = struct.unpack_from("<Q", data, off)
        off += 8
        raw_arrays = data[off : off + alen]
        off += alen
        (klen,) = struct.unpack_from("<Q", data, off)
        off += 8
        kv = data[off : off + klen]
        if len(raw_arrays) != alen or len(kv) != klen or off + klen != len(data):
            raise bad
        if sums is not None:
            for name, section in (("arrays", raw_arrays), ("kv_state", kv)):
                if sums.get(name) != _sha(section):
                    raise _damaged(path, SECTIONS[name])
        with np.load(io.BytesIO(raw_arrays), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ModelFileError:
        raise
    except (struct.error, ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, RecursionError) as e:
        raise bad from e
    want = FORMAT if magic == MAGIC else 1
    if header.get("format") != want:
        raise ModelFileError(f"{path} has an unknown chat file format version; it was written by another pocketomni")
    return header, arrays, kv


def _damaged(path: Path, section: str) -> ModelFileError:
    return ModelFileError(
        f"{path}: the {section} section is damaged (its checksum does not match); the file was changed or "
        "corrupted after it was saved. Restore an intact copy or save the chat again."
    )


# ------------------------------------------------------------------ header checks


def check_header(header: dict[str, Any], path: Path) -> None:
    """ModelFileError naming `path` unless every field Chat.restore reads has the type it expects."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ModelFileError(f"{path}: {what}; the chat file is damaged or was edited. Save the chat again.")

    def text(v: Any, what: str, optional: bool = False) -> None:
        need(isinstance(v, str) or (optional and v is None), f"{what} is not a string")
        if isinstance(v, str):
            _as_file_error(path, lambda: check_text(v, what))

    text(header.get("system"), "the system prompt", optional=True)
    need(isinstance(header.get("speech", False), bool), "'speech' is not true or false")
    st = header.get("speech_settings")
    need(st is None or isinstance(st, dict), "'speech_settings' is not an object")
    if isinstance(st, dict):
        need(st.get("options") is None or isinstance(st["options"], dict), "the speech options are not an object")
    opts = header.get("options", {})
    need(isinstance(opts, dict), "'options' is not an object")
    _as_file_error(path, lambda: GenerationOptions.from_dict(opts))
    policy = header.get("context_policy")
    need(policy is None or isinstance(policy, dict), "'context_policy' is not an object")
    _as_file_error(path, lambda: HistoryPolicy.resolve(policy))
    pending = header.get("pending", [])
    need(isinstance(pending, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                           for t in pending), "'pending' is not a list of token ids")
    messages = header.get("messages", [])
    need(isinstance(messages, list), "'messages' is not a list")
    for i, m in enumerate(messages):
        need(isinstance(m, dict) and m.get("role") in _ROLES, f"message {i} has no valid role")
        need(isinstance(m.get("content"), list), f"message {i} has no content list")
        need(isinstance(m.get("interrupted", False), bool), f"message {i}: 'interrupted' is not true or false")
        need(isinstance(m.get("dropped", False), bool), f"message {i}: 'dropped' is not true or false")
        for c in m["content"]:
            need(isinstance(c, dict) and c.get("type") in _PART_TYPES, f"message {i} holds a malformed part")
            if c["type"] == "text":
                text(c.get("text"), f"the text of message {i}")
            else:
                need(isinstance(c.get("label", ""), str) and isinstance(c.get("use_audio", True), bool)
                     and isinstance(c.get("dropped", False), bool), f"message {i} holds a malformed media part")


def _as_file_error(path: Path, check: Callable[[], Any]) -> None:
    try:
        check()
    except OptionsError as e:
        raise ModelFileError(f"{path}: {e}; the chat file is damaged or was edited. Save the chat again.") from e
