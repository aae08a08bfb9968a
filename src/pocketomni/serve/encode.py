"""Replies in OpenAI's shapes: chat.completion objects, chat.completion.chunk SSE events, audio bytes.

Speech leaves as 24 kHz mono 16-bit PCM: base64 chunks in stream deltas
(`choices[0].delta.audio = {id, data, transcript}`), a base64 WAV (or raw pcm16) in
`message.audio.data` otherwise. Floats in [-1, 1] map to round(x * 32767), as `save_wav` writes them.
"""

from __future__ import annotations

import base64
import io
import json
import time
import wave
from typing import Any

import numpy as np

from pocketomni.audio.rates import OUTPUT_RATE
from pocketomni.events import Done

__all__ = ["Reply", "audio_payload", "chunk", "completion", "pcm16", "sse", "usage"]

FINISH = {"stop": "stop", "stop_string": "stop", "length": "length", "cancelled": "stop"}
AUDIO_TTL = 3600  # seconds a spoken reply's id stays usable in a follow-up request


def pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian int16 bytes (clipped, rounded)."""
    x = np.clip(np.asarray(samples, np.float64), -1.0, 1.0)
    return np.round(x * 32767.0).astype("<i2").tobytes()


def wav_bytes(pcm: bytes, rate: int = OUTPUT_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def audio_payload(pcm: bytes, fmt: str) -> str:
    """Base64 of the whole reply's audio in the requested format ("wav" or "pcm16")."""
    return base64.b64encode(wav_bytes(pcm) if fmt == "wav" else pcm).decode("ascii")


def usage(done: Done, cached: int) -> dict[str, Any]:
    """OpenAI usage: the prompt counts the reused prefix too (`prompt_tokens_details.cached_tokens`)."""
    prompt = cached + done.usage.prompt_tokens
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": done.usage.reply_tokens,
        "total_tokens": prompt + done.usage.reply_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    if done.usage.audio_codes:
        out["completion_tokens_details"] = {"audio_tokens": done.usage.audio_codes}
    return out


class Reply:
    """Ids and timestamps shared by every object of one reply."""

    def __init__(self, request_id: str, model: str) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.audio_id = f"audio-{request_id}"
        self.model = model
        self.created = int(time.time())


def completion(r: Reply, done: Done, cached: int, audio: str | None) -> dict[str, Any]:
    """A non-streamed chat.completion; `audio` (base64) for spoken replies, whose text is the transcript."""
    message: dict[str, Any] = {"role": "assistant", "content": done.text if audio is None else None}
    if audio is not None:
        message["audio"] = {"id": r.audio_id, "data": audio, "expires_at": r.created + AUDIO_TTL,
                            "transcript": done.text}
    return {
        "id": r.id, "object": "chat.completion", "created": r.created, "model": r.model,
        "choices": [{"index": 0, "message": message, "finish_reason": FINISH[done.finish_reason],
                     "logprobs": None}],
        "usage": usage(done, cached),
    }


def chunk(r: Reply, delta: dict[str, Any] | None, finish: str | None = None,
          usage_: dict[str, Any] | None = None) -> dict[str, Any]:
    """One chat.completion.chunk; delta None gives the usage-only chunk (empty choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    out: dict[str, Any] = {"id": r.id, "object": "chat.completion.chunk", "created": r.created, "model": r.model,
                           "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` (or `data: [DONE]`)."""
    text = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
