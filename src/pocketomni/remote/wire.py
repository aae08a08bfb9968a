"""Chat requests and replies in OpenAI's chat-completions shapes, without a network: the request body
for a conversation, and the SDK's events from a reply, streamed (SSE chunks) or whole.

Whole replies are read in two shapes: OpenAI's (one choice; a spoken reply has `message.audio =
{data, transcript}` and no content) and vLLM-Omni's (one choice with the text and another with
`message.audio.data`, a base64 WAV; its examples/online_serving/qwen2_5_omni client reads them so).
"""

from __future__ import annotations

import base64
import io
import json
import os
import wave
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.audio.rates import OUTPUT_RATE
from pocketomni.errors import (
    ContextOverflowError,
    FeatureUnavailableError,
    MediaError,
    OptionsError,
    PocketOmniError,
)
from pocketomni.events import AudioChunk, Done, Event, TextDelta, Usage

__all__ = ["error_from_body", "events_from_completion", "events_from_sse", "media_items", "request_body"]

_FINISH = {"stop": "stop", "length": "length"}
_NEUTRAL = {"top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}  # values that switch an option off
_IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}
_AUDIO_FMT = {".wav": "wav", ".mp3": "mp3", ".flac": "flac", ".ogg": "ogg"}


def _bytes_of(src: Any, what: str) -> tuple[bytes, str]:
    """(file bytes, suffix) of a path or bytes input."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), ""
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.is_file():
            raise MediaError(f"{what} file not found: {p}; check the path")
        return p.read_bytes(), p.suffix.lower()
    raise OptionsError(f"over HTTP, pass {what}s as file paths or bytes (got {type(src).__name__})")


def _wav_of(samples: Any, rate: int) -> bytes:
    x = np.asarray(samples, np.float64).reshape(-1)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def media_items(images: list[Any], audio: list[Any]) -> list[dict[str, Any]]:
    """Content parts for images (data: URLs) and audio clips (input_audio; (samples, rate) as WAV)."""
    out: list[dict[str, Any]] = []
    for src in images:
        raw, suffix = _bytes_of(src, "image")
        mime = _IMAGE_MIME.get(suffix, "image/png" if raw[:4] == b"\x89PNG" else "image/jpeg")
        out.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(raw).decode()}"}})
    for src in audio:
        if isinstance(src, tuple) and len(src) == 2:
            raw, fmt = _wav_of(*src), "wav"
        else:
            raw, suffix = _bytes_of(src, "audio clip")
            fmt = _AUDIO_FMT.get(suffix, "mp3" if raw[:3] == b"ID3" else "wav")
        out.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(raw).decode(), "format": fmt}})
    return out


def request_body(model: str, messages: list[dict[str, Any]], options: Mapping[str, Any], *, stream: bool,
                 speech: Mapping[str, Any] | None) -> dict[str, Any]:
    """The chat-completions body. options: GenerationOptions fields (None ones left out; top_k and
    repetition_penalty are extensions that `pocketomni serve` and vLLM read). speech: {voice, ...}."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    for k, v in options.items():
        if v is None or (k == "stop" and not v) or _NEUTRAL.get(k, object()) == v:
            continue  # left out when off, so servers that spell "off" differently (vLLM's top_k -1) agree
        body[k] = list(v) if k == "stop" else v
    if stream:
        body["stream_options"] = {"include_usage": True}
    if speech is not None:
        body["modalities"] = ["text", "audio"]
        body["audio"] = {"voice": speech.get("voice") or "Chelsie", "format": "pcm16" if stream else "wav"}
        if speech.get("options"):
            body["speech_options"] = dict(speech["options"])
    return body


def _pcm16(data: str) -> np.ndarray:
    return (np.frombuffer(base64.b64decode(data), "<i2").astype(np.float32) / 32767.0)


def _wav_samples(data: str) -> AudioChunk:
    with wave.open(io.BytesIO(base64.b64decode(data))) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise PocketOmniError("the server's audio is not mono 16-bit WAV; PocketOmni reads only that")
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return AudioChunk(pcm.astype(np.float32) / 32767.0, w.getframerate())


def _usage(u: Mapping[str, Any] | None) -> Usage:
    if not u:
        return Usage()
    cached = ((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
    audio = ((u.get("completion_tokens_details") or {}).get("audio_tokens")) or 0
    return Usage(prompt_tokens=int(u.get("prompt_tokens", 0)) - int(cached), reply_tokens=int(u.get("completion_tokens", 0)),
                 audio_codes=int(audio))


def events_from_sse(lines: Iterator[str]) -> Iterator[Event]:
    """TextDelta / AudioChunk events from `data: {...}` lines, then Done (text, finish, usage)."""
    text, finish, usage, ended = [], "stop", Usage(), False
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            ended = True
            break
        obj = json.loads(data)
        if "error" in obj:
            raise error_from_body(obj, 200)
        if obj.get("usage"):
            usage = _usage(obj["usage"])
        for ch in obj.get("choices") or []:
            delta = ch.get("delta") or {}
            audio = delta.get("audio") or {}
            piece = delta.get("content") or audio.get("transcript")
            if piece:
                text.append(piece)
                yield TextDelta(piece)
            if audio.get("data"):
                yield AudioChunk(_pcm16(audio["data"]), OUTPUT_RATE)
            if ch.get("finish_reason"):
                finish = _FINISH.get(ch["finish_reason"], "stop")
    if not ended:
        raise PocketOmniError("the server closed the stream before its end (no [DONE]); see the server's log")
    yield Done(text="".join(text), finish_reason=finish, usage=usage)  # type: ignore[arg-type]


def events_from_completion(obj: Mapping[str, Any]) -> Iterator[Event]:
    """Events of a whole reply: the text, the audio (one chunk), then Done."""
    text, finish, audio = "", "stop", None
    for ch in obj.get("choices") or []:
        msg = ch.get("message") or {}
        a = msg.get("audio") or {}
        piece = msg.get("content") or a.get("transcript") or ""
        text = text or piece
        if a.get("data") and audio is None:
            audio = _wav_samples(a["data"])
        if ch.get("finish_reason"):
            finish = _FINISH.get(ch["finish_reason"], "stop")
    if text:
        yield TextDelta(text)
    if audio is not None:
        yield audio
    yield Done(text=text, finish_reason=finish, usage=_usage(obj.get("usage")))  # type: ignore[arg-type]


_ERRORS: dict[str, type[PocketOmniError]] = {
    "context_length_exceeded": ContextOverflowError, "invalid_media": MediaError, "invalid_value": OptionsError,
    "unsupported_feature": FeatureUnavailableError,
}


def error_from_body(obj: Any, status: int) -> PocketOmniError:
    """The typed error for an error reply ({"error": {message, code, ...}}; other bodies as text)."""
    err = obj.get("error") if isinstance(obj, Mapping) else None
    if not isinstance(err, Mapping):
        return PocketOmniError(f"the server answered {status}: {str(obj)[:300]}")
    cls = _ERRORS.get(str(err.get("code")), OptionsError if status == 400 else PocketOmniError)
    return cls(f"{err.get('message')} (HTTP {status})")
