"""Applies a chat's HistoryPolicy: keeps the recent turns' media embeddings, measures the kept history,
trims it and rebuilds the thinker cache (chat/history_policy.py says what is dropped and when).

The rebuilt cache holds exactly what a new chat sent the kept messages would prefill: the kept history
is rendered from scratch with the chat template (`render_history`), its text tokenized again, its
media taken from the stored embedding rows, laid out with fresh TMRoPE positions from 0 and
prefilled. Only a leading stretch of text equal to the old cache (the system prompt) is reused.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pocketomni.chat.conversation import Message, Part, PromptText, render_history
from pocketomni.chat.history_policy import HistoryPolicy, TrimPlan, apply_plan, plan_trim, turns_of
from pocketomni.engine.positions import (
    KIND_AUDIO,
    KIND_TEXT,
    KIND_VIDEO,
    PromptLayout,
    Segment,
    TextSegment,
    VideoSegment,
    build_prompt,
)
from pocketomni.errors import InternalError
from pocketomni.events import HistoryTrimmed

if TYPE_CHECKING:
    from pocketomni.engine.encoders import PreparedMedia
    from pocketomni.engine.thinker import Thinker, ThinkerSession

__all__ = ["HistoryKeeper", "StoredMedia"]


@dataclass(frozen=True)
class StoredMedia:
    """One media item of a kept turn: its prompt segment and embedding rows by kind."""

    segment: Segment
    rows: dict[int, np.ndarray]


def split_rows(prepared: list[PreparedMedia], rows: dict[int, np.ndarray]) -> list[StoredMedia]:
    """`MediaEncoders.encode_all`'s rows (concatenated per kind in prompt order) cut back into items."""
    at = {k: 0 for k in rows}
    out = []
    for item in prepared:
        counts = {item.kind: item.n_tokens}
        if isinstance(item.segment, VideoSegment) and item.segment.audio_tokens:
            counts = {KIND_VIDEO: item.n_tokens - item.segment.audio_tokens, KIND_AUDIO: item.segment.audio_tokens}
        mine = {}
        for kind, n in counts.items():
            mine[kind] = rows[kind][at[kind]: at[kind] + n].copy()
            at[kind] += n
        out.append(StoredMedia(item.segment, mine))
    if any(at[k] != rows[k].shape[0] for k in rows):
        raise InternalError("media rows do not match the turn's media items")
    return out


class HistoryKeeper:
    """One chat's policy state: the embeddings of the media in its last `media_turns` turns."""

    def __init__(self, policy: HistoryPolicy, thinker: Thinker) -> None:
        self.policy = policy
        self._thinker = thinker
        self._media: dict[int, list[StoredMedia]] = {}  # message index -> its media items, in order

    @property
    def trims(self) -> bool:
        return self.policy.mode == "trim"

    def clear(self) -> None:
        self._media.clear()

    def copy_from(self, other: HistoryKeeper) -> None:
        self._media = dict(other._media)

    @property
    def stored_bytes(self) -> int:
        """Bytes of media embeddings held for rebuilds."""
        return sum(r.nbytes for items in self._media.values() for s in items for r in s.rows.values())

    # ------------------------------------------------------------------ bookkeeping

    def items(self, prepared: list[PreparedMedia], rows: dict[int, np.ndarray]) -> list[StoredMedia] | None:
        """A turn's media items with their rows, to `record` once the turn is in the history (None when
        this chat never trims: nothing is kept)."""
        if not self.trims:
            return None
        return split_rows(prepared, rows) if prepared else []

    def record(self, first: int, msgs: list[Message], stored: list[StoredMedia] | None,
               messages: list[Message]) -> None:
        """After a prefill: keep the media rows of `msgs` (now messages[first:]; `stored` from `items`,
        None when unknown: those media become text at the next trim) and forget those of turns older
        than the last `media_turns`."""
        if not self.trims:
            return
        n_media = sum(len(m.media) for m in msgs)
        items = iter(stored) if stored is not None and len(stored) == n_media else None
        for k, m in enumerate(msgs):
            if m.media and items is not None:
                self._media[first + k] = [next(items) for _ in m.media]
        _, turns = turns_of(messages)
        recent = {i for t in turns[max(0, len(turns) - self.policy.media_turns):] for i in t}
        for i in [i for i in self._media if i not in recent]:
            del self._media[i]

    # ------------------------------------------------------------------ measuring and rebuilding

    def layout(self, messages: list[Message]) -> tuple[PromptLayout, dict[int, np.ndarray]] | None:
        """The cache a new chat would hold for the live messages (None: nothing to cache, i.e. no reply
        yet, only system messages), and its media rows by kind."""
        live = [(i, m) for i, m in enumerate(messages) if not m.dropped]
        if not any(m.role == "assistant" for _, m in live):
            return None
        while live[-1][1].role != "assistant":  # a cached history ends with the reply
            live.pop()
        media: list[Part] = []
        stored: list[StoredMedia] = []
        for i, m in live:
            if m.media:
                items = self._media.get(i)
                if items is None or len(items) != len(m.media):
                    raise InternalError(f"no stored embeddings for the media of message {i}")
                media += m.media
                stored += items
        th = self._thinker
        segments: list[Segment] = []
        it = iter(stored)
        for piece in render_history(th.template, [m for _, m in live], media):
            segments.append(TextSegment(th.tokenize_prompt(piece)) if isinstance(piece, PromptText) else next(it).segment)
        by_kind: dict[int, list[np.ndarray]] = {}
        for s in stored:
            for kind, r in s.rows.items():
                by_kind.setdefault(kind, []).append(r)
        rows = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in by_kind.items()}
        return build_prompt(segments, start_pos=0), rows

    def cost(self, messages: list[Message]) -> int:
        """Tokens the live messages take once rebuilt."""
        got = self.layout(messages)
        return 0 if got is None else int(got[0].input_ids.size)

    def _missing_rows(self, messages: list[Message]) -> frozenset[tuple[int, int]]:
        """Live media whose embeddings are gone (older turns, or a restored chat): they must drop."""
        return frozenset((i, j) for i, m in enumerate(messages) if not m.dropped and i not in self._media
                         for j, p in enumerate(m.parts) if p.kind != "text" and not p.dropped)

    def plan(self, messages: list[Message], target: int, limit: int) -> tuple[list[Message], TrimPlan]:
        """The trimmed messages and the plan (forced drops of media without stored rows included)."""
        forced = TrimPlan(media=self._missing_rows(messages))
        base = apply_plan(messages, forced)
        plan = plan_trim(base, self.cost, self.policy, target=target, limit=limit)
        media = frozenset(x for x in plan.media | forced.media if x[0] not in plan.messages)
        return apply_plan(base, plan), TrimPlan(plan.messages, media, plan.cost)

    def rebuild(self, session: ThinkerSession, messages: list[Message]) -> None:
        """Make the session's cache hold the live messages as a new chat would (see the module doc).
        On failure the cache is left empty and the error raised: the caller marks the history dropped."""
        got = self.layout(messages)
        try:
            if got is None:
                session.clear()
                return
            layout, rows = got
            keep = _shared_text_prefix(session, layout)
            session.rollback(keep)
            if keep < layout.input_ids.size:
                session.prefill(layout.part(keep, layout.input_ids.size), rows)
        except BaseException:
            session.clear()
            raise

    def apply(self, session: ThinkerSession, messages: list[Message], new: list[Message], plan: TrimPlan, *,
              before_turn: bool, t0: float) -> HistoryTrimmed:
        """Rebuild the cache for `new` (= `messages` with `plan`, from `plan()`); the event. On a failed
        rebuild the cache is empty and the error raised (the caller then uses mark_all_dropped)."""
        before = session.n_used
        dropped = [i for i in plan.messages if not messages[i].dropped]
        for i in [*dropped, *(i for i, _ in plan.media)]:
            self._media.pop(i, None)  # a message's media drop together (the planner works per turn)
        self.rebuild(session, new)
        return HistoryTrimmed(dropped_messages=len(dropped), dropped_media=len(plan.media), tokens_before=before,
                              tokens_after=session.n_used, seconds=time.perf_counter() - t0, before_turn=before_turn)


def _shared_text_prefix(session: ThinkerSession, layout: PromptLayout) -> int:
    """Leading tokens of the cache equal to the new layout's (text only, same ids and positions)."""
    h = session.history
    n = min(h.n, int(layout.input_ids.size))
    same = (h.ids[:n] == layout.input_ids[:n]) & (h.kinds[:n] == KIND_TEXT) & (layout.kinds[:n] == KIND_TEXT) & \
        np.all(h.positions[:, :n] == layout.positions[:, :n], axis=0)
    bad = np.flatnonzero(~same)
    return int(bad[0]) if bad.size else n


def mark_all_dropped(messages: list[Message]) -> list[Message]:
    """Every message dropped (a failed rebuild leaves an empty cache)."""
    return [m if m.dropped else dataclasses.replace(m, dropped=True) for m in messages]
