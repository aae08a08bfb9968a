"""The first turn of a chat's prompt (its system turn), decoded once per thinker and reused by every
new chat that starts with the same tokens.

Every chat starts with a system turn (the chat template adds a default one), and most chats of an app
share it: a speech chat must use the 40-token SPEECH_SYSTEM_PROMPT, which is ~0.5 s of prefill at 3B
on 2 cores, more than half the first turn's. A fresh `ThinkerSession` decodes its first turn as its
own batch, keeps a copy of the sequence's KV state and token history here, and later fresh sessions
whose prompt starts with the same turn restore that copy instead of decoding it. Both paths decode
the same batches (the turn, then the rest), so a restored turn gives the same logits and hidden states
bit for bit (tests/test_prefix_cache.py). Entries are keyed by token ids and whether hidden states are
kept; least recently used ones go first beyond `max_entries` or `max_bytes`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from pocketomni.engine.positions import KIND_TEXT, PromptLayout

__all__ = ["MAX_TURN_TOKENS", "CachedTurn", "PrefixCache", "first_turn_length"]

MAX_TURN_TOKENS = 2048  # longer first turns are decoded each time (their state would be tens of MB)


@dataclass(frozen=True)
class CachedTurn:
    """A decoded first turn: the sequence's llama.cpp state and its History arrays."""

    state: bytes
    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return len(self.state) + sum(a.nbytes for a in self.arrays.values())


def first_turn_length(layout: PromptLayout, turn_start: int | None) -> int:
    """Rows of the layout's first turn (before the second `turn_start` token), or 0 when it has no such
    turn that can be cached: not starting with `turn_start` at position 0, holding media, or longer than
    MAX_TURN_TOKENS."""
    ids = layout.input_ids
    if turn_start is None or ids.size < 2 or int(ids[0]) != turn_start:
        return 0
    later = np.flatnonzero(ids[1 : MAX_TURN_TOKENS + 1] == turn_start)
    if not later.size:
        return 0
    n = int(later[0]) + 1
    plain = np.all(layout.kinds[:n] == KIND_TEXT) and np.all(layout.positions[:, :n] == np.arange(n))
    return n if plain else 0


class PrefixCache:
    """First turns by (token ids, hidden states kept); thread-safe (chats of one thinker share it)."""

    def __init__(self, max_entries: int = 4, max_bytes: int = 64 << 20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[tuple[bytes, bool], CachedTurn] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _key(ids: np.ndarray, hidden: bool) -> tuple[bytes, bool]:
        return np.ascontiguousarray(ids, np.int64).tobytes(), hidden

    def get(self, ids: np.ndarray, hidden: bool) -> CachedTurn | None:
        key = self._key(ids, hidden)
        with self._lock:
            turn = self._entries.get(key)
            if turn is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return turn

    def put(self, ids: np.ndarray, hidden: bool, turn: CachedTurn) -> None:
        if turn.nbytes > self.max_bytes or self.max_entries <= 0:
            return
        key = self._key(ids, hidden)
        with self._lock:
            self._entries[key] = turn
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
