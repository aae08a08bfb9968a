"""What a chat does when its context window fills up: the policy and the plan of what to drop.

    chat = omni.chat(context_policy=HistoryPolicy(headroom=1024, keep=0.5, min_turns=2))
    chat = omni.chat(context_policy="error")            # today's behaviour: ContextOverflowError

With mode "trim" (the default) a conversation never ends with a full context. Right after a reply, if
fewer than `headroom` tokens are free, older turns are dropped until the kept history fills at most
`keep` of the window, and the thinker's cache is rebuilt from the kept history (the rebuild runs
before the reply's `Done`, not when the user has just stopped talking). A new turn that still does
not fit trims the same way before its prefill. The order:

  1. media of turns older than the last `media_turns` (their embeddings are no longer kept) become
     the text "[image]" / "[audio]" / "[video]";
  2. media of the other old turns (all but the last `min_turns`), oldest first;
  3. whole old turns, oldest first;
  4. only if the kept history still exceeds the hard limit (the next turn would not fit): media of
     the last `min_turns` turns, then those turns, oldest first.

The system prompt is never dropped. A turn is a user message and everything up to the next user
message. Dropped messages and media stay in `chat.messages`, marked `dropped=True`. This module only
plans (messages and a cost function in, a plan out); chat/history_keeper.py applies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pocketomni.chat.conversation import Message
from pocketomni.errors import OptionsError

__all__ = ["HistoryPolicy", "TrimPlan", "apply_plan", "plan_trim", "turns_of"]

DEFAULT_HEADROOM = 1024


@dataclass(frozen=True)
class HistoryPolicy:
    """How a chat handles a full context window.

    mode: "trim" drops old turns and rebuilds the cache (the conversation goes on forever); "error"
      raises ContextOverflowError when a turn does not fit (the caller decides).
    headroom: tokens kept free for the next turn (its prompt and reply); a reply that leaves fewer
      free triggers a trim. None: min(1024, n_ctx // 4); at most n_ctx // 2.
    keep: after a trim the kept history fills at most this fraction of the window (lower: rarer but
      larger trims; each trim re-prefills the kept history).
    min_turns: the last turns kept whole, media included, unless they alone would not leave room.
    media_turns: the last turns whose media embeddings are kept for rebuilds (memory: about
      n_tokens x n_embd x 4 bytes per item); older media become "[image]"-style text at a trim.
    """

    mode: Literal["trim", "error"] = "trim"
    headroom: int | None = None
    keep: float = 0.5
    min_turns: int = 2
    media_turns: int = 2

    def __post_init__(self) -> None:
        if self.mode not in ("trim", "error"):
            raise OptionsError(f"context_policy mode must be 'trim' or 'error', got {self.mode!r}")
        if self.headroom is not None and (not isinstance(self.headroom, int) or isinstance(self.headroom, bool)
                                          or self.headroom < 1):
            raise OptionsError(f"headroom must be a positive number of tokens or None, got {self.headroom!r}")
        if not isinstance(self.keep, (int, float)) or isinstance(self.keep, bool) or not 0.0 < self.keep < 1.0:
            raise OptionsError(f"keep must be a fraction of the context between 0 and 1, got {self.keep!r}")
        for name in ("min_turns", "media_turns"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise OptionsError(f"{name} must be a whole number >= 0, got {v!r}")

    @classmethod
    def resolve(cls, value: HistoryPolicy | str | Mapping[str, Any] | None) -> HistoryPolicy:
        """A policy from a HistoryPolicy, "trim" / "error", a dict of fields, or None (the default)."""
        if value is None:
            return cls()
        if isinstance(value, HistoryPolicy):
            return value
        if isinstance(value, str):
            return cls(mode=value)  # type: ignore[arg-type]
        if isinstance(value, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - names)
            if unknown:
                raise OptionsError(f"unknown context_policy field(s) {', '.join(unknown)}; use {', '.join(sorted(names))}")
            return cls(**value)
        raise OptionsError(f"context_policy must be 'trim', 'error', a HistoryPolicy or a dict, got {value!r}")

    def headroom_for(self, n_ctx: int) -> int:
        """Tokens to keep free after a reply, for a window of n_ctx tokens."""
        if self.headroom is None:
            return min(DEFAULT_HEADROOM, n_ctx // 4)
        return min(self.headroom, n_ctx // 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrimPlan:
    """What to drop: whole messages and single media parts (message index, part index)."""

    messages: frozenset[int] = frozenset()
    media: frozenset[tuple[int, int]] = frozenset()
    cost: int = 0  # tokens of the kept history, by the planner's cost function

    @property
    def empty(self) -> bool:
        return not self.messages and not self.media


def turns_of(messages: Sequence[Message]) -> tuple[list[int], list[list[int]]]:
    """Indices of the live (not dropped) messages: the leading system messages, and the turns (each a
    user message and what follows it up to the next user message)."""
    live = [i for i, m in enumerate(messages) if not m.dropped]
    head: list[int] = []
    while live and messages[live[0]].role == "system":
        head.append(live.pop(0))
    turns: list[list[int]] = []
    for i in live:
        if not turns or messages[i].role == "user":
            turns.append([i])
        else:
            turns[-1].append(i)
    return head, turns


def apply_plan(messages: Sequence[Message], plan: TrimPlan) -> list[Message]:
    """The messages with the plan's drops marked (nothing is removed)."""
    out = []
    for i, m in enumerate(messages):
        if i in plan.messages:
            m = dataclasses.replace(m, dropped=True)
        elif any((i, j) in plan.media for j in range(len(m.parts))):
            m = dataclasses.replace(m, parts=tuple(
                dataclasses.replace(p, dropped=True) if (i, j) in plan.media else p for j, p in enumerate(m.parts)))
        out.append(m)
    return out


def _media_of(messages: Sequence[Message], turn: Sequence[int]) -> set[tuple[int, int]]:
    return {(i, j) for i in turn for j, p in enumerate(messages[i].parts) if p.kind != "text" and not p.dropped}


def plan_trim(messages: Sequence[Message], cost: Callable[[list[Message]], int], policy: HistoryPolicy, *,
              target: int, limit: int) -> TrimPlan:
    """Drops that bring the live history's cost to `target` tokens (steps 1-3 of the module docstring;
    step 1 always happens), or, failing that, at least to `limit` (step 4). cost(messages) is the
    token count of the live part of `messages` once rebuilt. The result may still exceed `limit`
    (only the system prompt is left): the caller decides."""
    _, turns = turns_of(messages)
    n_old = max(0, len(turns) - policy.min_turns)
    old, protected = turns[:n_old], turns[n_old:]
    no_rows = turns[: max(0, len(turns) - policy.media_turns)]
    drop_msgs: set[int] = set()
    drop_media: set[tuple[int, int]] = set().union(*(_media_of(messages, t) for t in no_rows)) if no_rows else set()

    def current() -> int:
        return cost(apply_plan(messages, TrimPlan(frozenset(drop_msgs), frozenset(drop_media))))

    steps: list[tuple[str, list[int], int]] = [("media", t, target) for t in old]
    steps += [("turn", t, target) for t in old]
    steps += [("media", t, limit) for t in protected]
    steps += [("turn", t, limit) for t in protected]
    now = current()
    for what, turn, goal in steps:
        if now <= goal:
            continue
        if what == "media":
            new = _media_of(messages, turn) - drop_media
            if not new:
                continue
            drop_media |= new
        else:
            drop_msgs.update(turn)
            drop_media -= {(i, j) for (i, j) in drop_media if i in turn}
        now = current()
    return TrimPlan(frozenset(drop_msgs), frozenset(drop_media), now)
