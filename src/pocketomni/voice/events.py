"""The events a VoiceSession streams (besides the chat's own TextDelta and AudioChunk)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketomni.events import AudioChunk, Done, HistoryTrimmed, TextDelta

__all__ = ["BargeIn", "HistoryTrimmed", "Listening", "OutputStatus", "ReplyDone", "SessionClosed", "UserSpeaking", "UserTurn",
           "VoiceError", "VoiceEvent"]


@dataclass(frozen=True)
class Listening:
    """The session waits for the user (after start, and after each reply has played)."""

    hands_free: bool


@dataclass(frozen=True)
class OutputStatus:
    """Whether replies are spoken. speaking=False means text only; `reason` says why."""

    speaking: bool
    reason: str = ""


@dataclass(frozen=True)
class UserSpeaking:
    """The user started speaking (VAD speech_start) or pressed push-to-talk; `at` is time.monotonic()."""

    at: float


@dataclass(frozen=True, eq=False)
class UserTurn:
    """A user turn goes to the model. ended_at: time.monotonic() when its end was detected;
    audio: what the model hears (mono float32 at 16 kHz), or None for a text turn; image / video:
    whether an image or a video clip went with it; frames: the live camera's frames sent with it
    ((T, H, W, 3) uint8 at 2 fps, the audio as their sound track), or None."""

    audio_seconds: float
    image: bool = False
    text: str | None = None
    ended_at: float = 0.0
    audio: np.ndarray | None = None
    video: bool = False
    frames: np.ndarray | None = None


@dataclass(frozen=True)
class ReplyDone:
    """The model finished (or was interrupted). Latencies in seconds from the end of the user turn
    (0.0 when there was none): to the first text, and to the first audio handed to the Player."""

    done: Done
    interrupted: bool
    first_text_latency: float = 0.0
    first_audio_latency: float = 0.0


@dataclass(frozen=True)
class BargeIn:
    """Playback and generation were stopped. detected_at: time.monotonic() of the detection;
    stop_seconds: detection -> Player.stop() returned (the output is silent from then on);
    was_playing: audio was playing; source: "voice", "push_to_talk" or "interrupt"."""

    detected_at: float
    stop_seconds: float
    was_playing: bool
    source: str


@dataclass(frozen=True, eq=False)
class VoiceError:
    """Something failed in a turn or on a device; the session keeps listening when it can."""

    message: str
    error: BaseException | None = None


@dataclass(frozen=True)
class SessionClosed:
    """The last event of a session."""


# HistoryTrimmed: the chat's context was trimmed after a reply (the session passes the chat's event on)
VoiceEvent = Listening | OutputStatus | UserSpeaking | UserTurn | TextDelta | AudioChunk | HistoryTrimmed | ReplyDone | \
    BargeIn | VoiceError | SessionClosed
