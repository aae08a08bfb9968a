"""PocketOmni: Qwen2.5-Omni offline through llama.cpp, from Python.

    import pocketomni as po

    async with po.Omni.load("model-folder") as omni:
        chat = omni.chat()
        async for ev in chat.send("What is in this picture?", images=["cat.jpg"]):
            if isinstance(ev, po.TextDelta):
                print(ev.text, end="")

    chat = omni.chat(speech=True, voice="Ethan")              # spoken replies: AudioChunk events too
"""

from __future__ import annotations

# First, before anything loads numpy: OpenBLAS reads its idle spin once, at load (blas_spin module doc).
from pocketomni import blas_spin as _blas_spin  # noqa: F401  isort: skip
from pocketomni.audio.vad import VadConfig
from pocketomni.audio.wav import save_wav
from pocketomni.errors import (
    ContextOverflowError,
    ConversionError,
    FeatureUnavailableError,
    MediaError,
    ModelFileError,
    OptionsError,
    PocketOmniError,
)
from pocketomni.events import AudioChunk, Done, Event, HistoryTrimmed, Progress, TextDelta, Timings, Usage
from pocketomni.options import GenerationOptions, SpeechOptions
from pocketomni.voice.events import (
    BargeIn,
    Listening,
    OutputStatus,
    ReplyDone,
    SessionClosed,
    UserSpeaking,
    UserTurn,
    VoiceError,
    VoiceEvent,
)

__version__ = "0.1.0"

from pocketomni.numpy_blas import warn_if_no_blas

warn_if_no_blas()  # once, at load: without a BLAS token2wav is minutes per second of speech

__all__ = [
    "AudioChunk",
    "BargeIn",
    "Capabilities",
    "Chat",
    "ContextOverflowError",
    "ConversionError",
    "Done",
    "Event",
    "FeatureUnavailableError",
    "GenerationOptions",
    "HistoryPolicy",
    "HistoryTrimmed",
    "Listening",
    "LiveTurn",
    "MediaError",
    "Message",
    "ModelFileError",
    "Omni",
    "OptionsError",
    "OutputStatus",
    "Part",
    "PocketOmniError",
    "Progress",
    "ReplyDone",
    "SessionClosed",
    "SpeechOptions",
    "SpeechSettings",
    "TextDelta",
    "Timings",
    "Usage",
    "UserSpeaking",
    "UserTurn",
    "VadConfig",
    "VoiceError",
    "VoiceEvent",
    "VoiceSession",
    "__version__",
    "save_wav",
]

_LAZY = {
    "Omni": ("pocketomni.omni", "Omni"),
    "Chat": ("pocketomni.chat.chat", "Chat"),
    "LiveTurn": ("pocketomni.chat.live_turn", "LiveTurn"),
    "Capabilities": ("pocketomni.engine.model_folder", "Capabilities"),
    "HistoryPolicy": ("pocketomni.chat.history_policy", "HistoryPolicy"),
    "Message": ("pocketomni.chat.conversation", "Message"),
    "Part": ("pocketomni.chat.conversation", "Part"),
    "SpeechSettings": ("pocketomni.engine.speech", "SpeechSettings"),
    "VoiceSession": ("pocketomni.voice.session", "VoiceSession"),
}


def __getattr__(name: str):  # the engine (llama.cpp) loads on first use, not on `import pocketomni`
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pocketomni' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
