"""Finished conversations kept for prefix reuse, like llama-server's cached prompt.

An entry is a chat plus the digests of the messages its KV cache holds (the request's messages and
the reply). A later request whose messages start with those continues that chat: only the new
messages are prefilled. The entry is taken out while its request runs (one request per chat) and
put back under the longer key when the reply is complete; the least recently used entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BoundedMap", "CachedChat", "PrefixCache"]

C = TypeVar("C")
V = TypeVar("V")


@dataclass
class CachedChat(Generic[C]):
    kind: str  # chats of one kind only continue each other ("text" or "speech")
    keys: tuple[str, ...]
    chat: C


class PrefixCache(Generic[C]):
    """Least-recently-used chats by message prefix. Not thread-safe: use it from the event loop."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, CachedChat[C]] = OrderedDict()
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, kind: str, keys: tuple[str, ...]) -> CachedChat[C] | None:
        """Remove and return the entry holding the longest proper prefix of `keys`, if any."""
        best: tuple[int, int] | None = None  # (prefix length, entry id)
        for eid, e in self._entries.items():
            n = len(e.keys)
            if e.kind == kind and n < len(keys) and keys[:n] == e.keys and (best is None or n > best[0]):
                best = (n, eid)
        return None if best is None else self._entries.pop(best[1])

    def put(self, entry: CachedChat[C]) -> list[C]:
        """Keep `entry`; returns the chats evicted to stay within capacity (the caller closes them)."""
        evicted = [e.chat for e in self._entries.values() if e.kind == entry.kind and e.keys == entry.keys]
        self._entries = OrderedDict((i, e) for i, e in self._entries.items()
                                    if not (e.kind == entry.kind and e.keys == entry.keys))
        self._entries[self._next] = entry
        self._next += 1
        while len(self._entries) > self.capacity:
            evicted.append(self._entries.popitem(last=False)[1].chat)
        return evicted

    def clear(self) -> list[C]:
        out = [e.chat for e in self._entries.values()]
        self._entries.clear()
        return out


class BoundedMap(Generic[V]):
    """A small LRU dict (spoken replies' transcripts by audio id)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._d: OrderedDict[str, V] = OrderedDict()

    def __setitem__(self, key: str, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)

    def get(self, key: str) -> V | None:
        return self._d.get(key)
