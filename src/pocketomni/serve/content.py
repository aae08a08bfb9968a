"""OpenAI message content -> the SDK's message dicts, with a digest per message for prefix reuse.

Media arrive inline: `image_url` / `audio_url` / `video_url` with a data: URL, `input_audio` with
base64 bytes. A URL naming a file is read only when the server was started with --allow-local-files
DIR and the file lies inside DIR; http(s) URLs are refused (the server never goes online).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pocketomni.serve.errors import APIError

__all__ = ["AUDIO_FORMATS", "MessageConverter", "message_key"]

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
_VIDEO_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def message_key(role: str, digest: Any) -> str:
    """The digest of one message: its role and content (media by the hash of their bytes)."""
    return hashlib.sha256(json.dumps([role, digest]).encode()).hexdigest()


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _b64(data: str, what: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{what} is not valid base64 ({e}); encode the file's bytes with base64", param) from e


class MessageConverter:
    """Converts one request's messages. `transcripts` maps the id of an earlier spoken reply to its
    text, so an assistant message that only says `audio: {"id": ...}` continues the conversation."""

    def __init__(self, allow_local_files: Path | None, transcripts: Callable[[str], str | None]) -> None:
        self.root = allow_local_files
        self.transcripts = transcripts
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def close(self) -> None:
        """Delete the temporary files written for this request's videos."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def convert(self, messages: Any) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        """(SDK messages, one digest per message)."""
        if not isinstance(messages, list) or not messages:
            raise _bad("messages must be a non-empty list of {'role': ..., 'content': ...} objects", "messages")
        out, keys = [], []
        for i, m in enumerate(messages):
            p = f"messages[{i}]"
            if not isinstance(m, Mapping):
                raise _bad(f"{p} must be an object with 'role' and 'content'", p)
            role = _ROLES.get(m.get("role"))  # type: ignore[arg-type]
            if role is None:
                raise _bad(f"{p}.role {m.get('role')!r} is not supported; use system, user or assistant "
                           "(tool calls are not supported)", f"{p}.role")
            content, digest = self._content(m, role, p)
            out.append({"role": role, "content": content})
            keys.append(message_key(role, digest))
        if out[-1]["role"] != "user":
            raise _bad("the last message must be a user message (the one to answer)", f"messages[{len(out) - 1}]")
        return out, tuple(keys)

    # ------------------------------------------------------------------ content

    def _content(self, m: Mapping[str, Any], role: str, p: str) -> tuple[Any, Any]:
        content = m.get("content")
        if role == "assistant" and not content and isinstance(m.get("audio"), Mapping):
            text = self.transcripts(str(m["audio"].get("id", "")))
            if text is None:
                raise _bad(f"{p}.audio.id {m['audio'].get('id')!r} is not a reply this server still remembers; "
                           "send the reply's transcript as the message content instead", f"{p}.audio")
            return text, text
        if content is None:
            content = ""
        if isinstance(content, str):
            return content, content
        if not isinstance(content, list):
            raise _bad(f"{p}.content must be a string or a list of parts", f"{p}.content")
        items, digest = [], []
        for j, part in enumerate(content):
            item, d = self._part(part, role, f"{p}.content[{j}]")
            items.append(item)
            digest.append(d)
        if role != "user" and all(it["type"] == "text" for it in items):
            text = "".join(it["text"] for it in items)  # same digest as the string form
            return text, text
        return items, digest

    def _part(self, part: Any, role: str, p: str) -> tuple[dict[str, Any], Any]:
        if not isinstance(part, Mapping):
            raise _bad(f"{p} must be an object with a 'type'", p)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{p} needs a 'text' string", p)
            return {"type": "text", "text": text}, text
        if role != "user":
            raise _bad(f"{p}: {role} messages may only hold text, not {kind!r} parts", p)
        if kind == "input_audio":
            spec = part.get("input_audio")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("data"), str):
                raise _bad(f"{p} needs input_audio: {{data: <base64>, format: 'wav'}}", p)
            fmt = spec.get("format", "wav")
            if fmt not in AUDIO_FORMATS:
                raise _bad(f"{p}.input_audio.format {fmt!r} is not supported; use one of {', '.join(AUDIO_FORMATS)}",
                           f"{p}.input_audio.format")
            raw = _b64(spec["data"], f"{p}.input_audio.data", f"{p}.input_audio.data")
            return {"type": "audio", "audio": raw}, ["audio", hashlib.sha256(raw).hexdigest()]
        if kind in ("image_url", "audio_url", "video_url"):
            media = kind[: -len("_url")]
            spec = part.get(kind)
            url = spec.get("url") if isinstance(spec, Mapping) else spec
            if not isinstance(url, str) or not url:
                raise _bad(f"{p} needs {kind}: {{url: 'data:...;base64,...'}}", p)
            src = self._source(url, media, p)
            item: dict[str, Any] = {"type": media, media: src}
            if media == "video" and isinstance(spec, Mapping) and "use_audio_in_video" in spec:
                item["use_audio_in_video"] = spec["use_audio_in_video"]
            return item, [media, hashlib.sha256(url.encode()).hexdigest(), item.get("use_audio_in_video", True)]
        raise _bad(f"{p}: unknown content type {kind!r}; use text, image_url, input_audio, audio_url or video_url",
                   f"{p}.type")

    def _source(self, url: str, media: str, p: str) -> Any:
        """What the SDK reads: bytes of a data: URL, or the path of an allowed local file."""
        if url.startswith("data:"):
            head, sep, payload = url.partition(",")
            if not sep or not head.endswith(";base64"):
                raise _bad(f"{p}: a data URL must look like 'data:{media}/...;base64,<data>'", p)
            raw = _b64(payload, f"{p}'s data URL", p)
            if media != "video":
                return raw
            return self._video_file(raw, head[len("data:"): -len(";base64")])
        if url.startswith(("http://", "https://")):
            raise _bad(f"{p}: this server runs offline and does not download {url[:60]!r}; send the file inline as "
                       f"a data: URL (data:{media}/...;base64,...)", p)
        if self.root is None:
            raise _bad(f"{p}: local files are not allowed; send the file as a data: URL, or start the server with "
                       "--allow-local-files DIR", p)
        path = Path(url.removeprefix("file://"))
        if not path.is_absolute():
            raise _bad(f"{p}: a local file must be given by its absolute path (or a file:// URL)", p)
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise APIError(403, f"{p}: {path} is outside the folder this server may read ({self.root})",
                           type="permission_error", param=p, code="file_not_allowed")
        if not resolved.is_file():
            raise _bad(f"{p}: file not found: {path}", p)
        return str(resolved)

    def _video_file(self, raw: bytes, mime: str) -> str:
        """Videos are decoded from files (PyAV): write the bytes to a temporary one."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pocketomni-serve-")
        path = Path(self._tmp.name) / f"video{len(list(Path(self._tmp.name).iterdir()))}{_VIDEO_SUFFIX.get(mime, '.mp4')}"
        path.write_bytes(raw)
        return str(path)
