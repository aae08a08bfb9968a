"""The demo's model side: an asyncio loop in a background thread that owns the model, the chat and
the voice session. Nothing here imports Kivy; the app hands in `post(fn)`, which must run `fn` on the
UI thread (the app uses Clock.schedule_once). Only the public SDK API is used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pocketomni as po
from pocketomni.audio.backend import audio_backend, detect_platform
from pocketomni.voice.session import SessionClosed, VoiceError

log = logging.getLogger("pocketomni_demo")


MODEL_NICENESS = 10  # model threads yield the CPU to the UI thread (frames stay smooth on 2 cores)


def lower_thread_priority() -> None:
    """Lower this thread's scheduling priority; threads it starts later inherit it (Linux and Android:
    the executor threads, the voice session's threads and llama.cpp's compute threads). Elsewhere
    the niceness is per process, which would slow the UI too, so nothing is changed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MODEL_NICENESS)
    except OSError as e:  # a sandbox may forbid it: smoothness suffers, nothing breaks
        log.info("could not lower the model threads' priority: %s", e)


@dataclass(frozen=True)
class Conversation:
    """How the current chat speaks (changing any of these starts a new conversation)."""

    speech: bool = True
    voice: str = "Chelsie"
    preset: str = "fast"
    hands_free: bool = True


class Engine:
    """Model work off the UI thread. Every public method returns at once; results and session events
    come back through `post(...)` to the callbacks given (on the UI thread).

    The microphone and speaker come from the platform's audio backend: AudioRecord/AudioTrack
    through pyjnius on Android, sounddevice (PortAudio) elsewhere; `platform` overrides the
    detected one ("android", "linux", ...)."""

    def __init__(self, post: Callable[[Callable[[], None]], None], *, n_threads: int | None = None,
                 max_tokens: int = 512, input_device: Any = None, output_device: Any = None,
                 platform: str | None = None, camera_pixels: int | None = None) -> None:
        self._post = post
        self.platform = platform or detect_platform()
        self.audio = audio_backend(self.platform)
        self.n_threads, self.max_tokens = n_threads, max_tokens
        self.input_device, self.output_device = input_device, output_device
        self.camera_pixels = camera_pixels  # frame budget of the live camera (None: the SDK's default)
        self.camera: Any = None  # the live camera source while the camera is on (kept across conversations)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run_loop, name="demo-engine", daemon=True)
        self.thread.start()
        self.omni: Any = None
        self.chat: Any = None
        self.session: Any = None
        self.capabilities: Any = None
        self.conversation = Conversation()
        self.speech_options: dict[str, Any] | None = None  # SpeechOptions fields, e.g. {"max_codes": 500}
        self.on_event: Callable[[Any], None] = lambda ev: None
        self._pending: list[Any] = []  # events waiting for the next UI flush
        self._pending_lock = threading.Lock()
        self._pump: asyncio.Task[None] | None = None
        self._busy: asyncio.Lock | None = None  # loads and conversation starts run one at a time

    def _run_loop(self) -> None:
        lower_thread_priority()
        self.loop.run_forever()

    async def _serial(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._busy is None:
            self._busy = asyncio.Lock()
        async with self._busy:
            return await coro

    # ------------------------------------------------------------------ plumbing

    def _run(self, coro: Coroutine[Any, Any, Any], on_error: Callable[[BaseException], None] | None = None,
             on_done: Callable[[Any], None] | None = None) -> concurrent.futures.Future[Any]:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def finished(f: concurrent.futures.Future[Any]) -> None:
            err = f.exception()
            if err is not None and on_error is not None:
                self._post(lambda: on_error(err))
            elif err is None and on_done is not None:
                res = f.result()
                self._post(lambda: on_done(res))

        fut.add_done_callback(finished)
        return fut

    def _deliver(self, ev: Any) -> None:
        """Events arrive fast (a TextDelta per token): hand them to the UI in batches, one per frame."""
        with self._pending_lock:
            first = not self._pending
            self._pending.append(ev)
        if first:
            self._post(self._flush)

    def _flush(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        for ev in batch:
            self.on_event(ev)

    # ------------------------------------------------------------------ model

    def load(self, folder: str, on_done: Callable[[Any], None], on_error: Callable[[BaseException], None]) -> None:
        """Load a model folder in the background; `on_done(capabilities)` when ready."""

        async def go() -> Any:
            await self._close_all()
            kw = {"n_threads": self.n_threads} if self.n_threads else {}
            self.omni = await po.Omni.load(folder, **kw)
            self.capabilities = self.omni.capabilities
            return self.capabilities

        self._run(self._serial(go()), on_error, on_done)

    def start_conversation(self, conv: Conversation, on_done: Callable[[str], None],
                           on_error: Callable[[BaseException], None]) -> None:
        """A new chat and voice session. `on_done(note)` says how it runs (e.g. 'text only: ...')."""

        async def go() -> str:
            await self._close_session()
            speech = conv.speech and bool(self.capabilities and self.capabilities.speech_out)
            kw: dict[str, Any] = {"max_tokens": self.max_tokens}
            if speech:
                kw.update(speech=True, voice=conv.voice, speech_preset=conv.preset)
                if self.speech_options:
                    kw["speech_options"] = self.speech_options
            # the first speech chat loads the talker and token2wav: a worker thread keeps this loop free
            self.chat = await asyncio.to_thread(self.omni.chat, **kw)
            self.conversation = conv
            note = ""
            session = po.VoiceSession(self.chat, self.input_device, self.output_device, hands_free=conv.hands_free,
                                      audio_backend=self.audio, camera=self.camera, camera_pixels=self.camera_pixels)
            try:
                await asyncio.to_thread(session.start)
            except po.FeatureUnavailableError as e:  # no microphone (or no permission): typed turns still work
                session = po.VoiceSession(self.chat, False, self.output_device, hands_free=conv.hands_free,
                                          audio_backend=self.audio, camera_pixels=self.camera_pixels)
                await asyncio.to_thread(session.start)
                note = f"no microphone ({e}); type your messages"
            self.session = session
            self._pump = asyncio.create_task(self._forward(session))
            return note

        self._run(self._serial(go()), on_error, on_done)

    async def _forward(self, session: Any) -> None:
        async for ev in session:  # the SDK's async event stream
            self._deliver(ev)
            if isinstance(ev, SessionClosed):
                return

    async def _close_session(self) -> None:
        if self.session is not None:
            await asyncio.to_thread(self.session.close)
            self.session = None
        if self._pump is not None:
            await self._pump
            self._pump = None
        if self.chat is not None:
            await asyncio.to_thread(self.chat.close)
            self.chat = None

    async def _close_all(self) -> None:
        await self._close_session()
        if self.omni is not None:
            await self.omni.aclose()
            self.omni = None

    # ------------------------------------------------------------------ controls (thread-safe)

    def _call(self, fn: Callable[[], Any]) -> None:
        """Run a quick session call on the engine loop (keeps device calls off the UI thread)."""

        async def go() -> None:
            if self.session is not None:
                try:
                    fn()
                except po.PocketOmniError as e:
                    self._deliver(VoiceError(str(e), e))

        self._run(go())

    def press(self) -> None:
        self._call(lambda: self.session.press())

    def release(self) -> None:
        self._call(lambda: self.session.release())

    def interrupt(self) -> None:
        self._call(lambda: self.session.interrupt())

    def set_hands_free(self, on: bool) -> None:
        self.conversation = Conversation(self.conversation.speech, self.conversation.voice,
                                         self.conversation.preset, on)

        def switch() -> None:
            self.session.hands_free = on

        self._call(switch)

    def set_camera(self, source: Any) -> None:
        """A live camera source (pocketomni.voice.camera) for the spoken turns, or None: camera off."""
        self.camera = source
        self._call(lambda: self.session.set_camera(source))

    def attach_image(self, path: str | None) -> None:
        self._call(lambda: self.session.attach_image(path))

    def send_text(self, text: str) -> None:
        self._call(lambda: self.session.submit(text=text))

    def history(self) -> list[Any]:
        """The chat's messages (blocks briefly while a turn is stopping; call from tests or on close)."""
        if self.chat is None:
            return []
        return self._run(asyncio.to_thread(lambda: self.chat.messages)).result(timeout=60)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Close everything and stop the loop (blocks up to `timeout`)."""
        t0 = time.monotonic()
        try:
            self._run(self._serial(self._close_all())).result(timeout=timeout)
        except Exception:
            log.exception("closing the model failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=max(0.1, timeout - (time.monotonic() - t0)))
