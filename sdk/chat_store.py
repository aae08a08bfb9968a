"""Saving a chat to one file and restoring it: history, KV cache, options; written atomically.

File layout: b"POCHAT01" | u32 header length | JSON header | u64 length | .npz of the per-token
history (ids, kinds, positions[, hidden]) | u64 length | the KV sequence state (LlamaContext.get_state,
which carries its own model fingerprint).
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backend.kv_state import write_atomic
from .conversation import Message
from .errors import ModelFileError
from .options import GenerationOptions

if TYPE_CHECKING:
    from .chat import Chat
    from .omni import Omni

MAGIC = b"POCHAT01"
FORMAT = 1


def save_chat(chat: Chat, path: Path) -> None:
    """Write `chat` to `path` (caller holds the chat's turn lock)."""
    sess = chat._session
    header = {
        "format": FORMAT,
        "model": sess.thinker.model.path.name,
        "system": chat.system,
        "speech": chat.speech,
        "speech_settings": _speech_settings_dict(chat),
        "options": dataclasses.asdict(chat.options),
        "messages": [m.to_dict() for m in chat._messages],
        "pending": [int(t) for t in chat._pending],
    }
    buf = io.BytesIO()
    np.savez(buf, **sess.history.arrays())  # type: ignore[arg-type]
    arrays, kv = buf.getvalue(), sess.get_state()
    hj = json.dumps(header).encode()
    write_atomic(path, b"".join([
        MAGIC, struct.pack("<I", len(hj)), hj, struct.pack("<Q", len(arrays)), arrays, struct.pack("<Q", len(kv)), kv,
    ]))


def _speech_settings_dict(chat: Chat) -> dict[str, Any] | None:
    """A speech chat's voice, preset, streaming mode and talker options (JSON-ready)."""
    st = chat.speech_settings
    if st is None:
        return None
    return {"voice": st.voice, "preset": st.preset, "streaming": st.streaming,
            "options": dataclasses.asdict(st.options)}


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


def restore_chat(omni: Omni, path: Path) -> Chat:
    """A new chat on `omni` continuing exactly where the saved one stopped."""
    from .chat import Chat

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"chat file not found: {path}; check the path") from None
    header, arrays, kv = _parse(data, Path(path))
    opts = GenerationOptions.from_dict(header.get("options") or {})
    speech = bool(header.get("speech"))
    settings = None
    if speech and isinstance(header.get("speech_settings"), dict):
        from .speech import SpeechSettings

        d = header["speech_settings"]
        settings = SpeechSettings.resolve(d.get("voice"), d.get("preset"), d.get("options"), d.get("streaming"))
    chat = Chat(omni, system=header.get("system"), speech=speech, options=opts, speech_settings=settings)
    try:
        if chat.speech and "hidden" not in arrays:
            raise ModelFileError(f"{path} has no hidden states for a speech chat; it is corrupt")
        chat._session.set_state(kv, arrays)
        chat._messages = [Message.from_dict(m) for m in header.get("messages", [])]
        chat._pending = [int(t) for t in header.get("pending", [])]
    except BaseException:
        chat.close()
        raise
    return chat
