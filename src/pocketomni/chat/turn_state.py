"""What a chat turn carries between its parts: the caller's hooks, the prefilled prompt, and the chat's
turn lock (`TurnHold`), shared by `Chat` and the live turns that hold a chat while the user speaks."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketomni.chat.async_bridge import CancelFlag
from pocketomni.chat.conversation import Message
from pocketomni.chat.decoding import LogitsProcessor
from pocketomni.errors import PocketOmniError
from pocketomni.events import HistoryTrimmed, Progress

if TYPE_CHECKING:
    from pocketomni.chat.chat import Chat
    from pocketomni.chat.history_keeper import StoredMedia
    from pocketomni.engine.speech import SpeechSettings

__all__ = ["BUSY_WAIT_SECONDS", "PrefillStep", "Prefilled", "TurnAbandoned", "TurnHold", "TurnHooks"]

BUSY_WAIT_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class TurnHooks:
    """The caller's per-turn callables: progress reports and logits processors."""

    progress: Callable[[Progress], None] | None = None
    logits_processors: tuple[LogitsProcessor, ...] = ()
    speech: SpeechSettings | None = None  # this turn's speech settings (None: the chat's)


@dataclasses.dataclass
class Prefilled:
    """A turn whose prompt is in the cache: its messages, layout, last logits and the encode / prefill
    seconds it took (from the start of the turn's own work); its media's embeddings for later context
    rebuilds (None: not kept, a trim turns them into text) and the trim that made room for it, if any."""

    msgs: list[Message]
    layout: Any
    logits: np.ndarray
    media_s: float
    prefill_s: float
    media: list[StoredMedia] | None = None
    trimmed: HistoryTrimmed | None = None


PrefillStep = Callable[[CancelFlag, TurnHooks], "Prefilled | None"]


class TurnAbandoned(Exception):
    """A queued turn was cancelled before it got the chat."""


class TurnHold:
    """Holds a chat's turn lock. A turn suspended in the same thread (an unfinished send_sync) makes
    other calls fail at once instead of deadlocking; other threads wait for it (a cancelled turn
    ends within one token)."""

    def __init__(self, chat: Chat, wait: bool, flag: CancelFlag | None) -> None:
        self.chat, self.wait, self.flag = chat, wait, flag
        self.acquired = False

    def __enter__(self) -> TurnHold:  # noqa: PYI034
        c = self.chat
        me = threading.get_ident()
        if c._lock.acquire(blocking=False):
            self.acquired = True
        elif c._owner == me or not self.wait:
            raise PocketOmniError(
                "this chat is busy with another turn; finish iterating it (or close it) before starting another"
            )
        if not self.acquired:
            deadline = time.monotonic() + BUSY_WAIT_SECONDS
            while not c._lock.acquire(timeout=0.05):
                if self.flag is not None and self.flag.is_set:
                    raise TurnAbandoned
                if time.monotonic() > deadline:
                    raise PocketOmniError("this chat stayed busy with another turn for a minute; try again later")
            self.acquired = True
        c._owner = me
        return self

    def __exit__(self, *exc: object) -> None:
        c = self.chat
        c._published = tuple(c._messages)  # what `messages` shows other threads until the next turn ends
        c._owner = None
        c._flag = None
        c._lock.release()
