"""ModelRuntime: the loaded parts a model's chats run on (package-internal; apps use Omni and Chat).

    thinker         llama.cpp text model + its lock (engine/thinker.py)
    media           image / audio / video encoders (engine/encoders.py)
    speech_engine() the talker + token2wav every speech chat of the model shares, loaded on first use
    register/unregister  the open chats, so closing the model stops and frees them first

`Omni` builds one and hands it to each `Chat`; a chat sees nothing else of the model object.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pocketomni.engine.encoders import MediaEncoders
from pocketomni.engine.model_folder import ModelFolder
from pocketomni.engine.thinker import Thinker
from pocketomni.errors import OptionsError, PocketOmniError

if TYPE_CHECKING:
    from pocketomni.engine.speech import SpeechEngine

__all__ = ["ModelRuntime", "OpenChat"]


class OpenChat(Protocol):
    """What closing the model needs of a chat."""

    def cancel(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SpeechLoad:
    """How to load the speech engine (the thinker's settings, so the talker matches them)."""

    n_threads: int | None
    kv_f32: bool
    n_gpu_layers: int


class ModelRuntime:
    """The thinker, the media encoders, the shared speech engine and the open chats of one model."""

    def __init__(self, folder: ModelFolder, thinker: Thinker, media: MediaEncoders, speech_load: SpeechLoad) -> None:
        self.folder, self.thinker, self.media = folder, thinker, media
        self._speech_load = speech_load
        self._speech: SpeechEngine | None = None
        self._speech_lock = threading.Lock()
        self._chats: weakref.WeakSet[OpenChat] = weakref.WeakSet()
        self._closed = False
        self._close_lock = threading.Lock()
        self._voices: tuple[str, ...] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def n_ctx(self) -> int:
        return self.thinker.settings.n_ctx

    def check_open(self) -> None:
        if self._closed:
            raise PocketOmniError("this model is closed; load it again with Omni.load(...)")

    def speech_engine(self) -> SpeechEngine:
        """The talker + token2wav shared by this model's speech chats (loaded on first use)."""
        from pocketomni.engine.speech import SpeechEngine

        with self._speech_lock:
            self.check_open()
            if self._speech is None:
                s = self._speech_load
                self._speech = SpeechEngine(self.folder, self.thinker, n_ctx=self.n_ctx, n_threads=s.n_threads,
                                            kv_f32=s.kv_f32, n_gpu_layers=s.n_gpu_layers)
            return self._speech

    def check_voice(self, voice: str) -> None:
        """OptionsError for a voice the token2wav file lacks (reads only the file's header, once)."""
        if self._voices is None:
            from pocketomni.engine.weights import KEY_SPEAKERS, read_metadata

            self._voices = tuple(read_metadata(self.folder.token2wav).get(KEY_SPEAKERS) or ())  # type: ignore[arg-type]
        if voice not in self._voices:
            raise OptionsError(f"unknown voice {voice!r}; this model has {', '.join(sorted(self._voices))}")

    @property
    def speech_loaded(self) -> SpeechEngine | None:
        """The speech engine if a speech chat (or load_speech) has loaded it."""
        return self._speech

    def register(self, chat: OpenChat) -> None:
        self._chats.add(chat)

    def unregister(self, chat: OpenChat) -> None:
        self._chats.discard(chat)

    def close(self) -> None:
        """Stop running turns, free every chat, then the model's parts (idempotent)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for chat in list(self._chats):
            chat.cancel()
        for chat in list(self._chats):
            try:
                chat.close()
            except PocketOmniError:
                pass  # a chat suspended in this thread; the model's close frees its context anyway
        self.media.close()
        with self._speech_lock:
            if self._speech is not None:
                self._speech.close()
        self.thinker.close()
