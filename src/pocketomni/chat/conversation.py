"""The message model: our own turns and OpenAI-style message lists -> messages -> rendered prompt pieces.

A message is a role plus ordered parts (text, image, audio). The model's own chat template (Jinja,
stored in the thinker GGUF) renders messages to text with one placeholder per media item
(`<|vision_bos|><|IMAGE|><|vision_eos|>`, `<|audio_bos|><|AUDIO|><|audio_eos|>`); `split_rendered`
cuts that text into text pieces and media parts, in order.

A turn appended to a conversation already in the KV cache renders only its new part: the text after
the last assistant reply (`render_delta`), so the cached tokens are never re-tokenized.

Text from the caller (user, system and assistant text, OpenAI-style content) never becomes special
tokens: `render_turn` renders with a marker in place of every text part, so the result tells the
template's own text (whose `<|im_start|>`-style markers are special) from the caller's (plain text).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pocketomni.errors import MediaError, ModelFileError, OptionsError
from pocketomni.options import check_text

__all__ = [
    "AUDIO_PLACEHOLDER", "IMAGE_PLACEHOLDER", "VIDEO_PLACEHOLDER", "ChatTemplate", "Message",
    "Part",
    "PromptText", "parse_messages", "render_delta", "render_history", "render_turn", "split_rendered", "user_message",
]

IMAGE_PLACEHOLDER = "<|vision_bos|><|IMAGE|><|vision_eos|>"
AUDIO_PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"
VIDEO_PLACEHOLDER = "<|vision_bos|><|VIDEO|><|vision_eos|>"
_PLACEHOLDER_OF = {"image": IMAGE_PLACEHOLDER, "audio": AUDIO_PLACEHOLDER, "video": VIDEO_PLACEHOLDER}
ROLES = ("system", "user", "assistant")
_SENTINEL = "\x00pocketomni-reply\x00"  # stands for the last (cached) assistant reply when rendering deltas
_MARK = re.compile("\x00pocketomni-text-([0-9]+)\x00")  # stands for the caller's text part number N
_PLACEHOLDERS = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(AUDIO_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")


@dataclass(frozen=True)
class Part:
    """One piece of a message: text, or an image / audio clip / video.

    `source` is what the caller passed for a media part (path, bytes, PIL image, array, (array, rate),
    a video path or (frames, fps[, audio, rate])); it is not kept in saved chats. `label` is a short
    description that is ("cat.jpg", "image 640x480"). `use_audio` (videos): interleave the sound track.
    `dropped` (media): a full context trimmed it away; the model now sees the text "[image]" / "[audio]"
    / "[video]" in its place (see chat/history_policy.py).
    """

    kind: str  # "text" | "image" | "audio" | "video"
    text: str = ""
    source: Any = field(default=None, compare=False, repr=False)
    label: str = ""
    use_audio: bool = True
    dropped: bool = False

    def __post_init__(self) -> None:
        if self.kind == "text":
            check_text(self.text, "the text")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (media as their label)."""
        if self.kind == "text":
            return {"type": "text", "text": self.text}
        d: dict[str, Any] = {"type": self.kind, "label": self.label}
        if self.kind == "video" and not self.use_audio:
            d["use_audio"] = False
        if self.dropped:
            d["dropped"] = True
        return d

    @property
    def placeholder(self) -> str:
        """What the model sees of a dropped media part."""
        return f"[{self.kind}]"


@dataclass(frozen=True)
class Message:
    """A chat message. `interrupted` marks an assistant reply that was cut short (cancelled);
    `dropped` a message a full context trimmed away: kept in `chat.messages` as a transcript, no
    longer seen by the model (see chat/history_policy.py)."""

    role: str
    parts: tuple[Part, ...]
    interrupted: bool = False
    dropped: bool = False

    @property
    def text(self) -> str:
        """The text parts joined."""
        return "".join(p.text for p in self.parts if p.kind == "text")

    @property
    def media(self) -> list[Part]:
        """The image, audio and video parts the model sees, in order (dropped ones are left out)."""
        return [p for p in self.parts if p.kind != "text" and not p.dropped]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: {"role", "content": [...], "interrupted"?, "dropped"?}."""
        d: dict[str, Any] = {"role": self.role, "content": [p.to_dict() for p in self.parts]}
        if self.interrupted:
            d["interrupted"] = True
        if self.dropped:
            d["dropped"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Message:
        """Inverse of `to_dict` (media come back as labels only)."""
        parts = tuple(
            Part("text", text=str(c.get("text", ""))) if c.get("type") == "text"
            else Part(str(c.get("type")), label=str(c.get("label", "")), use_audio=bool(c.get("use_audio", True)),
                      dropped=bool(c.get("dropped", False)))
            for c in d.get("content", [])
        )
        return cls(str(d["role"]), parts, bool(d.get("interrupted", False)), bool(d.get("dropped", False)))

    def template_dict(self, texts: list[str] | None = None) -> dict[str, Any]:
        """The message as chat templates expect it (string content when it is text only). With
        `texts`, each text part is appended there and rendered as a marker (see `render_turn`)."""

        def text(p: Part) -> str:
            t = p.placeholder if p.dropped else p.text  # a dropped media part reads as text, e.g. "[image]"
            if texts is None or not t:
                return t
            texts.append(t)
            return f"\x00pocketomni-text-{len(texts) - 1}\x00"

        def is_text(p: Part) -> bool:
            return p.kind == "text" or p.dropped

        if not self.media:
            return {"role": self.role, "content": "".join(text(p) for p in self.parts if is_text(p))}
        content: list[dict[str, Any]] = []
        for p in self.parts:
            content.append({"type": "text", "text": text(p)} if is_text(p) else {"type": p.kind})
        return {"role": self.role, "content": content}


# ------------------------------------------------------------------ building messages


def _label(kind: str, src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        s = str(src)
        return f"{kind} (data URL)" if s.startswith("data:") else s
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"{kind} ({len(bytes(src))} bytes)"
    if isinstance(src, tuple) and len(src) == 2:
        arr = np.asarray(src[0]) if not isinstance(src[0], np.ndarray) else src[0]
        return f"{kind} ({arr.shape[0] if arr.ndim else 0} samples at {src[1]} Hz)"
    if isinstance(src, np.ndarray):
        return f"{kind} array {'x'.join(map(str, src.shape))}"
    size = getattr(src, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return f"{kind} {size[0]}x{size[1]}"
    return kind


def media_part(kind: str, src: Any, use_audio: bool = True) -> Part:
    """A media part for an image, audio or video source."""
    if kind == "video":
        return Part(kind, source=src, label=_video_label(src), use_audio=bool(use_audio))
    return Part(kind, source=src, label=_label(kind, src))


def _video_label(src: Any) -> str:
    if isinstance(src, tuple) and len(src) in (2, 4):
        try:
            n = len(src[0])
        except TypeError:
            return "video"
        return f"video ({n} frames at {src[1]} fps{', with sound' if len(src) == 4 else ''})"
    return _label("video", src)


def _check_video_source(src: Any) -> None:
    """Shape checks a video source needs before anything is decoded (typed errors, how to fix)."""
    if isinstance(src, (str, os.PathLike)):
        return
    if isinstance(src, tuple):
        if len(src) not in (2, 4):
            raise OptionsError("pass video as a file path, (frames, fps) or (frames, fps, audio, sample_rate); "
                               f"got a tuple of {len(src)} items")
        return
    if isinstance(src, np.ndarray):
        raise OptionsError("video frames alone need their fps: pass video=(frames, fps) or "
                           "(frames, fps, audio, sample_rate)")
    raise OptionsError(f"unsupported video input {type(src).__name__}; pass a file path, (frames, fps) or "
                       "(frames, fps, audio, sample_rate), or a list of those")


def _is_clip(x: Any) -> bool:
    """(samples, sample_rate): one audio clip, not a list of two inputs."""
    return (isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], (int, np.integer))
            and not isinstance(x[1], bool) and not isinstance(x[0], (str, bytes, os.PathLike)))


def _as_list(x: Any, what: str) -> list[Any]:
    """One input or a list/tuple of inputs -> list (audio's (samples, rate) is one input)."""
    if x is None:
        return []
    if isinstance(x, (str, bytes, bytearray, os.PathLike, np.ndarray)) or hasattr(x, "getpixel"):
        return [x]
    if what == "audio" and _is_clip(x):
        return [x]
    if isinstance(x, Sequence):
        return list(x)
    raise OptionsError(f"{what} must be one input or a list of inputs, got {type(x).__name__}")


def user_message(text: str | None = None, images: Any = None, audio: Any = None, video: Any = None,
                 use_audio_in_video: bool = True) -> Message:
    """A user turn: the videos, then the images, then the audio clips (each kind in order), then the text.

    images / audio / video: one input or a list (or tuple) of inputs. video: a file path (needs PyAV),
    (frames, fps) or (frames, fps, audio, sample_rate); its sound track is interleaved with the frames
    unless use_audio_in_video is False. audio: a path, bytes or (samples, sample_rate).
    """
    if text is not None and not isinstance(text, str):
        raise OptionsError(f"text must be a string, got {type(text).__name__}")
    if not isinstance(use_audio_in_video, bool):
        raise OptionsError(f"use_audio_in_video must be True or False, got {use_audio_in_video!r}")
    parts = []
    for v in video if isinstance(video, list) else [] if video is None else [video]:  # a tuple is one video
        _check_video_source(v)
        parts.append(media_part("video", v, use_audio_in_video))
    parts += [media_part("image", s) for s in _as_list(images, "images")]
    parts += [media_part("audio", s) for s in _as_list(audio, "audio")]
    if text:
        parts.append(Part("text", text=text))
    if not parts:
        raise OptionsError("a turn needs text, images, audio or a video; got nothing to send")
    return Message("user", tuple(parts))


def _url_source(url: Any, what: str) -> Any:
    if isinstance(url, Mapping):
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise OptionsError(f"{what} needs a URL string (a data: URL or a file path)")
    if url.startswith("file://"):
        return url[len("file://"):]
    return url


def _content_part(item: Any, role: str) -> Part:
    if isinstance(item, str):
        return Part("text", text=item)
    if not isinstance(item, Mapping):
        raise OptionsError(f"message content items must be dicts or strings, got {type(item).__name__}")
    kind = item.get("type")
    if kind in ("text", "input_text"):
        text = item.get("text")
        if not isinstance(text, str):
            raise OptionsError("a text content item needs a 'text' string")
        return Part("text", text=text)
    if role != "user":
        raise OptionsError(f"{role} messages may only hold text, not {kind!r} items")
    if kind == "image_url":
        return media_part("image", _url_source(item.get("image_url"), "an image_url item"))
    if kind == "image":
        return media_part("image", item.get("image"))
    if kind == "input_audio":
        spec = item.get("input_audio")
        data = spec.get("data") if isinstance(spec, Mapping) else None
        if not isinstance(data, str):
            raise OptionsError("an input_audio item needs {'input_audio': {'data': <base64>, 'format': 'wav'}}")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise MediaError(f"input_audio data is not valid base64 ({e}); encode the file bytes with base64") from e
        return media_part("audio", raw)
    if kind in ("audio", "audio_url"):
        src = item.get("audio") if kind == "audio" else _url_source(item.get("audio_url"), "an audio_url item")
        return media_part("audio", src)
    if kind in ("video", "video_url"):
        src = item.get("video") if kind == "video" else _url_source(item.get("video_url"), "a video_url item")
        if isinstance(src, list):  # OpenAI-style list of frames needs its rate
            raise OptionsError("a video item needs a file path or (frames, fps[, audio, sample_rate])")
        use_audio = item.get("use_audio_in_video", True)
        if not isinstance(use_audio, bool):
            raise OptionsError("use_audio_in_video in a video item must be True or False")
        _check_video_source(src)
        return media_part("video", src, use_audio)
    raise OptionsError(
        f"unknown content type {kind!r}; use 'text', 'image_url', 'image', 'input_audio', 'audio' or 'video'"
    )


def parse_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """OpenAI-style messages ({"role", "content": str | [{"type": "text"|"image_url"|"input_audio", ...}]})."""
    if isinstance(messages, Mapping) or not isinstance(messages, Sequence) or isinstance(messages, str):
        raise OptionsError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out: list[Message] = []
    for m in messages:
        if not isinstance(m, Mapping):
            raise OptionsError("each message must be a dict with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise OptionsError(f"unknown message role {role!r}; use one of {', '.join(ROLES)}")
        content = m.get("content")
        parts: tuple[Part, ...]
        if isinstance(content, str):
            parts = (Part("text", text=content),) if content else ()
        elif isinstance(content, Sequence):
            parts = tuple(_content_part(c, role) for c in content)
        else:
            raise OptionsError(f"message content must be a string or a list, got {type(content).__name__}")
        out.append(Message(role, parts))
    if not out or out[-1].role != "user":
        raise OptionsError("the last message must be a user message (the one to answer)")
    return out


# ------------------------------------------------------------------ rendering


class ChatTemplate:
    """A Jinja chat template rendered in a sandbox (the settings Hugging Face uses)."""

    def __init__(self, source: str) -> None:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ModelFileError(f"the chat template refused the conversation: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ModelFileError(f"the model's chat template does not parse ({e}); re-convert the model") from e
        self.source = source

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render messages to prompt text."""
        return self._render([m.template_dict() for m in messages], add_generation_prompt)

    def _render(self, dicts: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        import jinja2

        try:
            return self._template.render(messages=dicts, add_generation_prompt=add_generation_prompt)
        except jinja2.TemplateError as e:
            raise ModelFileError(f"the model's chat template failed to render ({e})") from e


def render_delta(template: ChatTemplate, cached: Sequence[Message], new: Sequence[Message]) -> str:
    """Text of `new` (ending with the assistant prompt) as it continues `cached`.

    `cached` is empty or ends with an assistant reply; the text after that reply (its end marker,
    then the new messages) is what the KV cache still lacks.
    """
    return _render_after(template, cached, [m.template_dict() for m in new])


def _render_after(template: ChatTemplate, cached: Sequence[Message], new: list[dict[str, Any]]) -> str:
    if not cached:
        return template._render(new, add_generation_prompt=True)
    if cached[-1].role != "assistant":
        raise ValueError("a cached conversation must end with an assistant reply")
    dicts = [m.template_dict() for m in cached[:-1]]
    dicts.append({"role": "assistant", "content": _SENTINEL})
    dicts += new
    full = template._render(dicts, add_generation_prompt=True)
    if full.count(_SENTINEL) != 1:
        raise ModelFileError("the chat template does not reproduce assistant replies verbatim; cannot continue the chat")
    return full.split(_SENTINEL, 1)[1]


@dataclass(frozen=True)
class PromptText:
    """A stretch of prompt text between media: runs of (text, trusted). Trusted text is the chat
    template's own (its `<|im_start|>`-style markers are special tokens); the rest is the caller's
    text, which is tokenized as plain text whatever it contains."""

    runs: tuple[tuple[str, bool], ...]


def render_turn(template: ChatTemplate, cached: Sequence[Message], new: Sequence[Message],
                media: Sequence[Part]) -> list[PromptText | Part]:
    """`render_delta` cut into prompt text and media parts, with the caller's text kept apart."""
    texts: list[str] = []
    rendered = _render_after(template, cached, [m.template_dict(texts) for m in new])
    return _prompt_pieces(rendered, texts, media)


def render_history(template: ChatTemplate, cached: Sequence[Message], media: Sequence[Part]) -> list[PromptText | Part]:
    """The prompt pieces of a cached conversation (ending with an assistant reply) as a new chat sent
    the same messages would lay them out: everything up to the end of the last reply's text, where
    `render_turn` continues. `media`: the media parts of `cached`, in order. Rebuilds a trimmed cache."""
    if not cached or cached[-1].role != "assistant":
        raise ValueError("a cached conversation must end with an assistant reply")
    texts: list[str] = []
    dicts = [m.template_dict(texts) for m in cached[:-1]]
    dicts.append({"role": "assistant", "content": _SENTINEL})
    full = template._render(dicts, add_generation_prompt=False)
    if full.count(_SENTINEL) != 1:
        raise ModelFileError("the chat template does not reproduce assistant replies verbatim; cannot continue the chat")
    head = full.split(_SENTINEL, 1)[0]
    reply = cached[-1].text
    if reply:
        texts.append(reply)
        head += f"\x00pocketomni-text-{len(texts) - 1}\x00"
    return _prompt_pieces(head, texts, media)


def _prompt_pieces(rendered: str, texts: list[str], media: Sequence[Part]) -> list[PromptText | Part]:
    out: list[PromptText | Part] = []
    for piece in split_rendered(rendered, media):
        if isinstance(piece, Part):
            out.append(piece)
            continue
        runs: list[tuple[str, bool]] = []
        for i, run in enumerate(_MARK.split(piece)):
            if i % 2:
                runs.append((texts[int(run)], False))
            elif run:
                runs.append((run, True))
        out.append(PromptText(tuple(runs)))
    return out


def split_rendered(text: str, media: Sequence[Part]) -> list[str | Part]:
    """Cut rendered text at the media placeholders: text pieces and the media parts, in order."""
    pieces = _PLACEHOLDERS.split(text)
    found = [p for p in pieces[1::2]]
    want = [_PLACEHOLDER_OF[m.kind] for m in media]
    if len(found) > len(want):
        raise MediaError(
            "the text contains the model's media placeholder tokens (<|vision_bos|>, <|IMAGE|>, <|AUDIO|>, "
            "<|VIDEO|> ...); remove them and pass images / audio / video as attachments instead"
        )
    if found != want:
        raise ModelFileError(
            "the model's chat template does not render images and audio the Qwen2.5-Omni way "
            f"(expected {len(want)} media placeholders, found {len(found)}); use a Qwen2.5-Omni model file"
        )
    out: list[str | Part] = []
    it = iter(media)
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append(next(it))
        elif piece:
            out.append(piece)
    return out

