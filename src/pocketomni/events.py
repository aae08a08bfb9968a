"""The events a chat turn streams: small frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pocketomni.audio.rates import OUTPUT_RATE


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply text, in order. Concatenate the pieces to get the reply."""

    text: str


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """A piece of the spoken reply: mono float32 samples in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int = OUTPUT_RATE

    @property
    def duration(self) -> float:
        """Length of this chunk in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Usage:
    """Token counts of one turn."""

    prompt_tokens: int = 0
    media_tokens: int = 0
    reply_tokens: int = 0
    audio_codes: int = 0


@dataclass(frozen=True)
class Timings:
    """Timings of one turn, in seconds and tokens per second (0 when not applicable)."""

    time_to_first_token: float = 0.0
    time_to_first_audio: float = 0.0
    prefill_tokens_per_second: float = 0.0
    decode_tokens_per_second: float = 0.0
    media_encode_seconds: float = 0.0
    audio_seconds: float = 0.0
    real_time_factor: float = 0.0
    total_seconds: float = 0.0


@dataclass(frozen=True)
class Progress:
    """How far the work before a reply has come, passed to `send(..., on_progress=...)` from the
    turn's worker thread: stage "encode" counts media items, "prefill" counts prompt rows."""

    stage: Literal["encode", "prefill"]
    done: int
    total: int


@dataclass(frozen=True)
class HistoryTrimmed:
    """The context window was nearly full: old turns (or their media) were dropped and the cache
    rebuilt from the kept history (the chat's `context_policy`, chat/history_policy.py). Streamed
    right before a turn's `Done` when the reply left less than the policy's headroom free, or before
    a turn's first `TextDelta` when the new turn did not fit. The dropped messages stay in
    `chat.messages` marked `dropped=True`; dropped media read "[image]", "[audio]" or "[video]".

    dropped_messages: whole messages dropped now; dropped_media: media parts replaced now;
    tokens_before / tokens_after: cache cells in use; seconds: planning plus re-prefill;
    before_turn: True when the new turn forced it (the rebuild was on the way to the reply).
    """

    dropped_messages: int
    dropped_media: int
    tokens_before: int
    tokens_after: int
    seconds: float
    before_turn: bool


FinishReason = Literal["stop", "length", "stop_string", "cancelled"]


@dataclass(frozen=True)
class Done:
    """The last event of a turn: why it stopped, the full reply text, usage and timings.

    finish_reason: "stop" (the model ended its reply), "length" (max_tokens or a full context),
    "stop_string" (one of the stop strings appeared; it is not part of `text`), "cancelled".
    tokens: the reply's token ids (without the end-of-reply token).
    """

    text: str
    finish_reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    tokens: tuple[int, ...] = ()


Event = TextDelta | AudioChunk | HistoryTrimmed | Done
