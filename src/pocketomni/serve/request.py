"""A chat-completions request body -> what one turn needs: messages, generation options, speech.

OpenAI fields: model, messages, stream, stream_options.include_usage, max_tokens /
max_completion_tokens, temperature, top_p, seed, stop, n (1 only), modalities, audio {voice, format}.
PocketOmni extensions (send them with the openai client's `extra_body`): top_k, repetition_penalty,
speech_preset ("fast" | "reference"), speech_options (SpeechOptions fields: the talker's sampling and
max_codes). Unset fields keep the SDK's defaults (greedy text, the reference's talker sampling).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pocketomni.options import GenerationOptions, SpeechOptions
from pocketomni.serve.errors import APIError

__all__ = ["ChatRequest", "SpeechRequest", "parse_request"]

OUTPUT_FORMATS = ("wav", "pcm16")
_UNSUPPORTED = ("tools", "functions", "tool_choice", "logprobs", "top_logprobs", "logit_bias")


@dataclass(frozen=True)
class SpeechRequest:
    """A spoken reply: voice (a speaker of the model), output format, vocoder preset, talker options."""

    voice: str | None
    format: str
    preset: str | None
    options: SpeechOptions


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: Any  # the raw OpenAI messages (converted later, they may hold media)
    options: GenerationOptions
    stream: bool = False
    include_usage: bool = False
    speech: SpeechRequest | None = None


def _bad(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _options(body: Mapping[str, Any]) -> GenerationOptions:
    fields: dict[str, Any] = {}
    for key, name in (("max_completion_tokens", "max_tokens"), ("max_tokens", "max_tokens"),
                      ("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                      ("top_k", "top_k"), ("repetition_penalty", "repetition_penalty")):
        if body.get(key) is not None and name not in fields:
            fields[name] = body[key]
    stop = body.get("stop")
    if stop is not None:
        fields["stop"] = [stop] if isinstance(stop, str) else stop
        if not isinstance(fields["stop"], list):
            raise _bad("stop must be a string or a list of strings", "stop")
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise _bad(f"{key} is not supported; use repetition_penalty (e.g. 1.1) instead", key,
                       "unsupported_parameter")
    try:
        return GenerationOptions.from_dict(fields)
    except TypeError as e:  # a value of the wrong type inside the dataclass checks
        raise _bad(f"invalid generation option: {e}", None) from e


def _speech(body: Mapping[str, Any], stream: bool, seed: int | None) -> SpeechRequest | None:
    modalities = body.get("modalities")
    if modalities is None:
        modalities = ["text"]
    if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"} or "text" not in modalities:
        raise _bad("modalities must be [\"text\"] or [\"text\", \"audio\"]", "modalities")
    audio = body.get("audio")
    if "audio" not in modalities:
        if audio is not None:
            raise _bad("the audio parameter needs modalities: [\"text\", \"audio\"]", "audio")
        return None
    if audio is None:
        audio = {}
    if not isinstance(audio, Mapping):
        raise _bad("audio must be an object {voice, format}", "audio")
    voice = audio.get("voice")
    if isinstance(voice, Mapping):
        voice = voice.get("id")
    if voice is not None and not isinstance(voice, str):
        raise _bad("audio.voice must be a speaker name such as 'Chelsie'", "audio.voice")
    fmt = audio.get("format", "pcm16" if stream else "wav")
    if fmt not in OUTPUT_FORMATS:
        raise _bad(f"audio.format {fmt!r} is not supported; use 'wav' or 'pcm16' (24 kHz mono 16-bit)",
                   "audio.format", "unsupported_value")
    if stream and fmt != "pcm16":
        raise _bad("streamed audio is sent as pcm16 chunks: set audio.format to 'pcm16'", "audio.format",
                   "unsupported_value")
    raw = body.get("speech_options") or {}
    if not isinstance(raw, Mapping):
        raise _bad("speech_options must be an object of SpeechOptions fields", "speech_options")
    raw = dict(raw)
    if "seed" not in raw and seed is not None:
        raw["seed"] = seed  # one seed makes the whole reply reproducible, speech included
    try:
        opts = SpeechOptions.from_dict(raw)
    except TypeError as e:
        raise _bad(f"invalid speech option: {e}", "speech_options") from e
    preset = body.get("speech_preset")
    if preset is not None and not isinstance(preset, str):
        raise _bad("speech_preset must be 'fast' or 'reference'", "speech_preset")
    return SpeechRequest(voice=voice, format=fmt, preset=preset, options=opts)


def parse_request(body: Any) -> ChatRequest:
    """Validate the top-level fields (messages are converted later). APIError / OptionsError on bad input."""
    if not isinstance(body, Mapping):
        raise _bad("the request body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required: the id that GET /v1/models lists", "model", "missing_required_parameter")
    if "messages" not in body:
        raise _bad("messages is required", "messages", "missing_required_parameter")
    for key in _UNSUPPORTED:
        if body.get(key):
            raise _bad(f"{key} is not supported by this server", key, "unsupported_parameter")
    if body.get("n", 1) != 1:
        raise _bad("n must be 1 (one reply per request)", "n", "unsupported_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    so = body.get("stream_options") or {}
    if not isinstance(so, Mapping):
        raise _bad("stream_options must be an object", "stream_options")
    options = _options(body)
    return ChatRequest(model=model, messages=body["messages"], options=options, stream=stream,
                       include_usage=bool(so.get("include_usage", False)),
                       speech=_speech(body, stream, options.seed))
