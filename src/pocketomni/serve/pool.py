"""Chats for requests: a fresh one, or a cached conversation the request continues (prefix reuse)."""

from __future__ import annotations

from dataclasses import dataclass

from pocketomni.chat.chat import Chat
from pocketomni.engine.speech import SpeechSettings
from pocketomni.errors import OptionsError
from pocketomni.omni import Omni
from pocketomni.serve.cache import BoundedMap, CachedChat, PrefixCache
from pocketomni.serve.content import message_key
from pocketomni.serve.request import SpeechRequest

__all__ = ["ChatPool", "Lease"]


@dataclass
class Lease:
    """A chat lent to one request. `reused`: how many of the request's messages it already holds."""

    chat: Chat
    kind: str
    keys: tuple[str, ...]
    reused: int
    cached_tokens: int


class ChatPool:
    """Hands out chats on one model and takes finished conversations back into the prefix cache."""

    def __init__(self, omni: Omni, capacity: int) -> None:
        self.omni = omni
        self.cache: PrefixCache[Chat] = PrefixCache(capacity)
        self.transcripts: BoundedMap[str] = BoundedMap(256)
        self._voices: tuple[str, ...] | None = None

    def voices(self) -> tuple[str, ...]:
        """The speakers of the model's token2wav file (read from its header once)."""
        if self._voices is None:
            from pocketomni.engine.weights import KEY_SPEAKERS, read_metadata

            token2wav = self.omni.folder.token2wav
            self._voices = () if token2wav is None else tuple(read_metadata(token2wav).get(KEY_SPEAKERS) or ())
        return self._voices

    def _settings(self, sp: SpeechRequest) -> SpeechSettings:
        voice = sp.voice
        if voice is not None:  # OpenAI clients often send lower-case names
            match = [v for v in self.voices() if v.lower() == voice.lower()]
            if not match:
                raise OptionsError(f"unknown voice {voice!r}; this model speaks with {', '.join(self.voices())}")
            voice = match[0]
        return SpeechSettings.resolve(voice, sp.preset, sp.options)

    async def checkout(self, keys: tuple[str, ...], speech: SpeechRequest | None) -> Lease:
        kind = "text" if speech is None else "speech"
        settings = None if speech is None else self._settings(speech)
        entry = self.cache.take(kind, keys)
        if entry is not None and not entry.chat.closed:
            if settings is not None:
                entry.chat.speech_settings = settings  # voice and talker options may change between turns
            return Lease(entry.chat, kind, keys, len(entry.keys), entry.chat.n_tokens)
        # "error": a cached chat must hold exactly the request's messages (its keys), so it never trims
        if settings is None:
            chat = await self.omni.achat(context_policy="error")
        else:
            self.omni.folder.require("speech_out")
            chat = await self.omni.achat(speech=True, voice=settings.voice, speech_preset=settings.preset,
                                         speech_options=settings.options, speech_streaming=settings.streaming,
                                         context_policy="error")
        return Lease(chat, kind, keys, 0, 0)

    async def checkin(self, lease: Lease, reply: str | None, audio_id: str | None = None) -> None:
        """Keep the chat for reuse: with the reply when it is complete, as it was when the turn never
        started (reply None and nothing changed), else close it."""
        keys = lease.keys + (message_key("assistant", reply),) if reply is not None else lease.keys[: lease.reused]
        if reply is not None and audio_id is not None:
            self.transcripts[audio_id] = reply
        if not keys or lease.chat.closed:
            await lease.chat.aclose()
            return
        for old in self.cache.put(CachedChat(lease.kind, keys, lease.chat)):
            await old.aclose()

    async def close(self) -> None:
        for chat in self.cache.clear():
            await chat.aclose()
