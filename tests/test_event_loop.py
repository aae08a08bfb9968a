"""Nothing blocks the event loop: every heavy step of the async API (loading, chat creation, media
encoding, prefill and decode, the talker and token2wav, saving, restoring, forking, closing) runs in a
worker thread, never on the loop's thread.

Two detectors over one whole session on the tiny speech model (load, a spoken turn with an image and
audio, save, restore, fork, close):
- exact: the heavy native and numpy entry points are wrapped to record the thread they run on; none
  may run on the loop's thread. This is what proves the rule: it does not depend on timing.
- asyncio debug mode's slow-callback detector (the standard tool): no loop step may take longer than
  SLOW seconds. The loop itself only moves events between threads (microseconds); SLOW is far above
  that and far above the GIL switch interval (5 ms), yet below what any of the wrapped steps costs,
  so a regression that moves one onto the loop shows up here too with its own name in the log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pocketomni as po
from pocketomni.audio.tower import AudioEncoder
from pocketomni.backend.context import LlamaContext
from pocketomni.backend.llama import LlamaModel
from pocketomni.backend.mtmd import MtmdContext
from pocketomni.chat import chat as chat_module
from pocketomni.engine.talker import Talker
from pocketomni.token2wav import Token2Wav

SLOW = 0.25  # seconds a single loop step may take

HEAVY: list[tuple[Any, str]] = [
    (LlamaModel, "__init__"),
    (LlamaContext, "__init__"),
    (LlamaContext, "decode"),
    (LlamaContext, "get_state"),
    (LlamaContext, "set_state"),
    (LlamaContext, "close"),
    (MtmdContext, "__init__"),
    (MtmdContext, "encode_image"),
    (AudioEncoder, "encode"),  # the exact audio tower (numpy); mtmd encodes audio only in stock folders
    (Talker, "__init__"),
    (Token2Wav, "__init__"),
    (chat_module, "write_chat_file"),
    (chat_module, "read_chat_file"),
]


class ThreadLog:
    """Records, per wrapped function, whether it ever ran on the event loop's thread."""

    def __init__(self) -> None:
        self.loop_thread: int | None = None
        self.on_loop: list[str] = []
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if threading.get_ident() == self.loop_thread:
                self.on_loop.append(name)
            return fn(*args, **kwargs)

        return recorded


@pytest.fixture
def thread_log(monkeypatch: pytest.MonkeyPatch) -> ThreadLog:
    log = ThreadLog()
    for owner, attr in HEAVY:
        name = f"{getattr(owner, '__name__', owner)}.{attr}"
        monkeypatch.setattr(owner, attr, log.wrap(name, getattr(owner, attr)))
    return log


class SlowCallbacks(logging.Handler):
    """Collects asyncio debug mode's 'Executing <handle> took N seconds' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Executing "):
            self.messages.append(msg)


async def whole_session(folder: Path, tmp: Path, log: ThreadLog) -> list[str]:
    loop = asyncio.get_running_loop()
    log.loop_thread = threading.get_ident()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW
    rng = np.random.default_rng(0)
    image = (rng.random((56, 84, 3)) * 255).astype(np.uint8)
    sound = (0.1 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    kinds: list[str] = []
    async with po.Omni.load(folder, n_threads=1) as omni:
        await omni.aload_speech()
        chat = await omni.achat(speech=True, max_tokens=40,
                                speech_options=po.SpeechOptions(temperature=0.0, max_codes=80, seed=1))
        async for event in chat.send("Describe this.", images=[image], audio=[(sound, 16000)]):
            kinds.append(type(event).__name__)
        _ = chat.messages
        await chat.asave(tmp / "spoken.chat")
        restored = await omni.arestore_chat(tmp / "spoken.chat")
        async with await restored.afork() as forked:
            async for event in forked.send("And now?", max_tokens=4):
                kinds.append(type(event).__name__)
        await restored.areset()
        await restored.aclose()
        await chat.aclose()
    return kinds


def test_the_async_api_never_blocks_the_event_loop(converted_tiny, tmp_path: Path, thread_log: ThreadLog) -> None:
    folder = converted_tiny("base", "f32")
    slow = SlowCallbacks()
    logging.getLogger("asyncio").addHandler(slow)
    try:
        kinds = asyncio.run(whole_session(folder, tmp_path, thread_log))
    finally:
        logging.getLogger("asyncio").removeHandler(slow)
    # the session did the heavy work it was meant to exercise (else the detectors prove nothing)
    assert "AudioChunk" in kinds and kinds.count("Done") == 2
    for owner, attr in HEAVY:
        name = f"{getattr(owner, '__name__', owner)}.{attr}"
        assert thread_log.calls.get(name, 0) > 0, f"{name} never ran: the session no longer exercises it"
    assert thread_log.on_loop == [], f"ran on the event loop's thread: {sorted(set(thread_log.on_loop))}"
    assert slow.messages == [], "\n".join(slow.messages)


def test_the_detector_catches_a_blocking_call(converted_tiny, thread_log: ThreadLog) -> None:
    """The same detectors flag the sync API called from a coroutine (what the async twins avoid)."""
    folder = converted_tiny("base", "f32")
    slow = SlowCallbacks()
    logging.getLogger("asyncio").addHandler(slow)

    async def blocking() -> None:
        loop = asyncio.get_running_loop()
        thread_log.loop_thread = threading.get_ident()
        loop.set_debug(True)
        loop.slow_callback_duration = SLOW
        with po.Omni.load_sync(folder, n_threads=1) as omni:  # wrong on purpose: loads on the loop
            omni.chat().close()

    try:
        asyncio.run(blocking())
    finally:
        logging.getLogger("asyncio").removeHandler(slow)
    assert {"LlamaModel.__init__", "LlamaContext.__init__"} <= set(thread_log.on_loop)
